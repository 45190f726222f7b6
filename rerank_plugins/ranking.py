"""The one ranking function; every adapter calls it so ``top_n`` means one thing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from rerank_plugins.errors import InvalidInputError, InvalidScoreError
from rerank_plugins.scoring import Score

__all__ = ["Ranked", "rank"]


class Ranked(NamedTuple):
    """A document's position in the caller's input and its score."""

    index: int  # type: ignore[assignment]  # shadows tuple.index(); the field is the API
    score: Score


def rank(
    scores: Sequence[Score],
    *,
    top_n: int | None = None,
    score_threshold: float | None = None,
) -> list[Ranked]:
    """Order scores from most to least relevant.

    The sort is stable (equal scores keep input order). Scores from a cascade are ordered
    by stage first (a document the later stage scored comes before every one it did not,
    whatever the values: the stages' scales need not agree), then by value.
    ``score_threshold`` keeps
    scores ``>= score_threshold``; ``top_n`` then keeps the first ``top_n``. ``None``
    disables either. Raises :class:`InvalidScoreError` for a NaN score (naming its
    indices) and :class:`InvalidInputError` for ``top_n <= 0`` or a NaN threshold.

    Examples:
        >>> [r.index for r in rank([Score(0.2, "logit"), Score(0.9, "logit"), Score(0.2, "logit")])]
        [1, 0, 2]
        >>> [r.index for r in rank([Score(0.9, "logit", stage=0), Score(0.1, "logit", stage=1)])]
        [1, 0]
    """
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int)):
        raise InvalidInputError(f"top_n must be an int or None, got {type(top_n).__name__}")
    if top_n is not None and top_n <= 0:
        raise InvalidInputError(f"top_n must be positive, got {top_n}")
    if score_threshold is not None and math.isnan(score_threshold):
        raise InvalidInputError("score_threshold is NaN")
    bad = [i for i, s in enumerate(scores) if math.isnan(s.value)]
    if bad:
        raise InvalidScoreError(f"the backend returned NaN scores for documents {bad}", indices=bad)
    ranked = sorted(
        (Ranked(i, s) for i, s in enumerate(scores)),
        key=lambda r: (r.score.stage or 0, r.score.value),
        reverse=True,
    )
    if score_threshold is not None:
        ranked = [r for r in ranked if r.score.value >= score_threshold]
    if top_n is not None:
        ranked = ranked[:top_n]
    return ranked
