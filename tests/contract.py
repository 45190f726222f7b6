"""The contract every scorer honours. Each scorer's tests subclass ``ScorerContract``
(``PairScorerContract`` for a :class:`~rerank_plugins.scoring.PairScorer`) and provide a
``scorer`` fixture (and may override ``docs``)."""

from __future__ import annotations

import math
import random

import pytest

from rerank_plugins import InputTooLongError, InvalidInputError, Score, Scorer
from rerank_plugins.scoring import PairScorer

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


class PairScorerContract(ScorerContract):
    """The contract of a :class:`~rerank_plugins.scoring.PairScorer` (the seam the server's
    cross-request batching runs on), on top of :class:`ScorerContract`. ``long_document``
    must give a text longer than the scorer's per-pair token limit."""

    def long_document(self, scorer: PairScorer) -> str:
        limit = getattr(scorer, "max_length", 512)
        return " ".join(f"w{i % 50 + 1}" for i in range(limit + 16))

    def test_is_a_pair_scorer(self, scorer: PairScorer) -> None:
        assert isinstance(scorer, PairScorer)

    def test_score_equals_score_pairs_of_encode_pairs(
        self, scorer: PairScorer, docs: list[str]
    ) -> None:
        direct = scorer.score(QUERY, docs)
        via_seam = scorer.score_pairs(scorer.encode_pairs(QUERY, docs))
        assert [(s.kind, s.tokens, s.truncated) for s in via_seam] == [
            (s.kind, s.tokens, s.truncated) for s in direct
        ]
        assert [s.value for s in via_seam] == pytest.approx(
            [s.value for s in direct], abs=self.tolerance
        )

    def test_pairs_of_different_queries_in_one_call_score_as_they_do_alone(
        self, scorer: PairScorer, docs: list[str]
    ) -> None:
        queries = [QUERY, "w7 w8 w9", "w30"]
        groups = [docs[::2], docs[1::2], docs[:3]]
        mixed = [p for q, g in zip(queries, groups, strict=True) for p in scorer.encode_pairs(q, g)]
        order = list(range(len(mixed)))
        random.Random(7).shuffle(order)
        scores = scorer.score_pairs([mixed[i] for i in order])
        together = [math.nan] * len(mixed)
        for position, score in zip(order, scores, strict=True):
            together[position] = score.value
        alone = [s.value for q, g in zip(queries, groups, strict=True) for s in scorer.score(q, g)]
        assert together == pytest.approx(alone, abs=self.tolerance)

    def test_score_pairs_keeps_the_order_of_the_pairs(
        self, scorer: PairScorer, docs: list[str]
    ) -> None:
        pairs = list(scorer.encode_pairs(QUERY, docs))
        forward = [s.value for s in scorer.score_pairs(pairs)]
        backward = [s.value for s in scorer.score_pairs(pairs[::-1])]
        assert backward == pytest.approx(forward[::-1], abs=self.tolerance)
        assert [s.tokens for s in scorer.score_pairs(pairs)] == [p.tokens for p in pairs]

    def test_empty_input_gives_empty_results(self, scorer: PairScorer) -> None:
        assert list(scorer.encode_pairs(QUERY, [])) == []
        assert scorer.score_pairs([]) == []

    def test_encode_pairs_checks_its_input_as_score_does(self, scorer: PairScorer) -> None:
        with pytest.raises(InvalidInputError):
            scorer.encode_pairs("", ["w1"])
        with pytest.raises(InvalidInputError) as info:
            scorer.encode_pairs(QUERY, ["w1", None])  # type: ignore[list-item]
        assert info.value.indices == (1,)

    def test_overflow_error_names_the_documents_and_truncate_flags_them(
        self, scorer: PairScorer
    ) -> None:
        long = self.long_document(scorer)
        with pytest.raises(InputTooLongError) as info:
            scorer.encode_pairs(QUERY, ["w2", long, "w3", long], overflow="error")
        assert info.value.indices == (1, 3)
        cut = scorer.encode_pairs(QUERY, ["w2", long], overflow="truncate")
        assert [p.truncated for p in cut] == [False, True]
        assert cut[1].tokens <= getattr(scorer, "max_length", cut[1].tokens)

    def test_max_document_tokens_cuts_and_flags(self, scorer: PairScorer) -> None:
        pairs = scorer.encode_pairs("w1", ["w2 w3 w4 w5 w6", "w2"], max_document_tokens=2)
        assert [p.truncated for p in pairs] == [True, False]
        scores = scorer.score_pairs(pairs)
        assert [s.truncated for s in scores] == [True, False]

    def test_raw_scores_are_logits(self, scorer: PairScorer, docs: list[str]) -> None:
        raw = scorer.score_pairs(scorer.encode_pairs(QUERY, docs[:3]), raw=True)
        assert {s.kind for s in raw} == {"logit"}
        assert all(math.isfinite(s.value) for s in raw)

    def test_score_batch_equals_score_pairs_in_order(
        self, scorer: PairScorer, docs: list[str]
    ) -> None:
        pairs = list(scorer.encode_pairs(QUERY, docs[:4]))[::-1]
        batch = scorer.score_batch(pairs)
        assert [s.tokens for s in batch] == [p.tokens for p in pairs]
        assert [s.value for s in batch] == pytest.approx(
            [s.value for s in scorer.score_pairs(pairs)], abs=self.tolerance
        )
        assert scorer.score_batch([]) == [] and isinstance(scorer.padded, bool)
