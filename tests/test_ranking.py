"""The one ranking function and the scoring-seam checks."""

from __future__ import annotations

import math

import pytest

from rerank_plugins import InvalidInputError, InvalidScoreError, Score, ScoringError, rank
from rerank_plugins.scoring import check_scores
from rerank_plugins.testing import FunctionScorer
from tests.contract import ScorerContract


def scores(*values: float) -> list[Score]:
    return [Score(v, "logit") for v in values]


def test_rank_orders_by_descending_score() -> None:
    assert [r.index for r in rank(scores(0.1, 0.7, -2.0, 0.5))] == [1, 3, 0, 2]


def test_ties_keep_input_order() -> None:
    assert [r.index for r in rank(scores(1.0, 2.0, 1.0, 2.0, 1.0))] == [1, 3, 0, 2, 4]


def test_top_n_keeps_the_best() -> None:
    ranked = rank(scores(0.1, 0.7, -2.0, 0.5), top_n=2)
    assert [(r.index, r.score.value) for r in ranked] == [(1, 0.7), (3, 0.5)]


def test_top_n_larger_than_input_keeps_all() -> None:
    assert len(rank(scores(0.1, 0.2), top_n=10)) == 2


def test_threshold_is_inclusive_and_applies_before_top_n() -> None:
    ranked = rank(scores(0.1, 0.7, 0.5, 0.5), score_threshold=0.5, top_n=2)
    assert [r.index for r in ranked] == [1, 2]
    assert [r.index for r in rank(scores(0.1, 0.2), score_threshold=0.9)] == []


@pytest.mark.parametrize("top_n", [0, -1, 1.5, True])
def test_bad_top_n_is_rejected(top_n: object) -> None:
    with pytest.raises(InvalidInputError):
        rank(scores(1.0), top_n=top_n)  # type: ignore[arg-type]


def test_nan_scores_are_rejected_with_their_indices() -> None:
    with pytest.raises(InvalidScoreError) as info:
        rank(scores(0.1, math.nan, 0.3, math.nan))
    assert info.value.indices == (1, 3)


def test_nan_threshold_is_rejected() -> None:
    with pytest.raises(InvalidInputError):
        rank(scores(0.1), score_threshold=math.nan)


def test_empty_input_ranks_to_nothing() -> None:
    assert rank([]) == []


def test_infinite_scores_are_ordered() -> None:
    assert [r.index for r in rank(scores(0.0, math.inf, -math.inf))] == [1, 0, 2]


def test_score_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError):
        Score(0.5, "similarity")  # type: ignore[arg-type]


def test_score_is_frozen() -> None:
    s = Score(0.5, "probability", tokens=3)
    with pytest.raises(AttributeError):
        s.value = 1.0  # type: ignore[misc]


def test_check_scores_catches_a_scorer_that_loses_documents() -> None:
    with pytest.raises(ScoringError) as info:
        check_scores(scores(1.0), 3)
    assert info.value.indices == (0, 1, 2)
    with pytest.raises(ScoringError):
        check_scores([1.0, 2.0], 2)


class TestFunctionScorer(ScorerContract):
    @pytest.fixture()
    def scorer(self) -> FunctionScorer:
        return FunctionScorer(lambda q, d: float(len(set(q.split()) & set(d.split())) + len(d)))
