"""The contract every scorer honours. Each scorer's tests subclass ``ScorerContract``
and provide a ``scorer`` fixture (and may override ``docs``)."""

from __future__ import annotations

import math

import pytest

from rerank_plugins import InvalidInputError, Score, Scorer

QUERY = "w1 w2 w3 w4"


class ScorerContract:
    # Scores from two runs of the same input may differ by float noise of batched kernels.
    tolerance = 1e-5

    def test_is_a_scorer(self, scorer: Scorer) -> None:
        assert isinstance(scorer, Scorer)

    def test_one_score_per_document_in_input_order(self, scorer: Scorer, docs: list[str]) -> None:
        scores = scorer.score(QUERY, docs)
        assert len(scores) == len(docs)
        assert all(isinstance(s, Score) and math.isfinite(s.value) for s in scores)
        # Scoring each document alone must give the same value at the same position.
        alone = [scorer.score(QUERY, [d])[0].value for d in docs]
        assert [s.value for s in scores] == pytest.approx(alone, abs=self.tolerance)

    def test_scores_follow_input_order_when_documents_are_permuted(
        self, scorer: Scorer, docs: list[str]
    ) -> None:
        scores = [s.value for s in scorer.score(QUERY, docs)]
        perm = list(reversed(range(len(docs))))
        permuted = [s.value for s in scorer.score(QUERY, [docs[i] for i in perm])]
        assert permuted == pytest.approx([scores[i] for i in perm], abs=self.tolerance)

    def test_documents_get_different_scores(self, scorer: Scorer, docs: list[str]) -> None:
        values = [s.value for s in scorer.score(QUERY, docs)]
        assert max(values) - min(values) > 1e-3

    def test_empty_list_gives_empty_result(self, scorer: Scorer) -> None:
        assert scorer.score(QUERY, []) == []

    def test_empty_string_documents_are_scored(self, scorer: Scorer) -> None:
        scores = scorer.score(QUERY, ["", "w5 w6", ""])
        assert len(scores) == 3 and all(math.isfinite(s.value) for s in scores)
        assert scores[0].value == pytest.approx(scores[2].value, abs=self.tolerance)

    def test_deterministic(self, scorer: Scorer, docs: list[str]) -> None:
        assert scorer.score(QUERY, docs) == scorer.score(QUERY, docs)

    def test_does_not_mutate_documents(self, scorer: Scorer, docs: list[str]) -> None:
        before = list(docs)
        scorer.score(QUERY, docs)
        assert docs == before

    def test_accepts_tuples(self, scorer: Scorer, docs: list[str]) -> None:
        assert scorer.score(QUERY, tuple(docs)) == scorer.score(QUERY, docs)

    @pytest.mark.parametrize("query", ["", "   ", None, 3])
    def test_bad_query_is_rejected(self, scorer: Scorer, query: object) -> None:
        with pytest.raises(InvalidInputError):
            scorer.score(query, ["w1"])  # type: ignore[arg-type]

    def test_non_string_documents_are_rejected_with_their_indices(self, scorer: Scorer) -> None:
        with pytest.raises(InvalidInputError) as info:
            scorer.score(QUERY, ["w1", None, "w2", 7])  # type: ignore[list-item]
        assert info.value.indices == (1, 3)

    def test_a_bare_string_is_not_a_document_list(self, scorer: Scorer) -> None:
        with pytest.raises(InvalidInputError):
            scorer.score(QUERY, "w1 w2")

    async def test_async_equals_sync(self, scorer: Scorer, docs: list[str]) -> None:
        assert await scorer.ascore(QUERY, docs) == scorer.score(QUERY, docs)

    async def test_async_rejects_bad_input(self, scorer: Scorer) -> None:
        with pytest.raises(InvalidInputError):
            await scorer.ascore("", ["w1"])
