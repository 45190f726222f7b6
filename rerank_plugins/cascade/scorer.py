"""Two scorers in a cascade: a cheap one for every candidate, a better one for the best.

``Cascade(first, second, keep=K)`` scores every document with ``first``, then the ``K``
best of them (as :func:`~rerank_plugins.ranking.rank` orders ``first``'s scores) again
with ``second``. Results come back in input order: the kept documents carry ``second``'s
score, the others ``first``'s, and each score's ``stage`` says which stage produced it, so
that :func:`~rerank_plugins.ranking.rank` (and every adapter, which calls it) puts the
kept documents first, by ``second``'s score, then the others by ``first``'s — whatever
the two scales. Any two scorers work (local, remote, another cascade); nothing here knows
a backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rerank_plugins._options import Rebuildable, checked_options
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import Score, Scorer, check_inputs, check_scores

__all__ = ["Cascade"]


class Cascade(Rebuildable):
    """Score with ``first``, re-score the ``keep`` best with ``second``.

    ``stage`` of a result: ``first``'s own stage (0 when it sets none) for a document
    ``first`` alone scored; for a kept one, one past the deepest stage ``first`` gave plus
    ``second``'s own stage, so cascades nest (``Cascade(Cascade(a, b, keep=50), c,
    keep=5)``). Sync and async (``ascore`` awaits both scorers' ``ascore``).
    """

    @checked_options
    def __init__(self, first: Scorer, second: Scorer, *, keep: int) -> None:
        for name, scorer in (("first", first), ("second", second)):
            if not isinstance(scorer, Scorer):
                raise InvalidInputError(f"{name} must be a Scorer, got {type(scorer).__name__}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInputError(f"keep must be a positive int, got {keep!r}")
        self.first = first
        self.second = second
        self.keep = keep

    #: a document's score depends on the other candidates: a server runs each request whole
    scores_whole_list = True

    @property
    def name(self) -> str:
        names = (getattr(s, "name", type(s).__name__) for s in (self.first, self.second))
        return " -> ".join(str(n) for n in names)

    def _kept(self, scores: list[Score]) -> list[int]:
        """Positions of the ``keep`` best first-stage scores, in input order."""
        return sorted(r.index for r in rank(scores, top_n=self.keep))

    @staticmethod
    def _merge(first: list[Score], kept: list[int], second: list[Score]) -> list[Score]:
        base = 1 + max((s.stage or 0) for s in first)
        out = [s if s.stage is not None else dataclasses.replace(s, stage=0) for s in first]
        for i, s in zip(kept, second, strict=True):
            out[i] = dataclasses.replace(s, stage=base + (s.stage or 0))
        return out

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        first = check_scores(self.first.score(query, docs), len(docs))
        kept = self._kept(first)
        try:
            second = check_scores(self.second.score(query, [docs[i] for i in kept]), len(kept))
        except RerankError as exc:
            raise _reindexed(exc, kept) from None
        return self._merge(first, kept, second)

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        first = check_scores(await self.first.ascore(query, docs), len(docs))
        kept = self._kept(first)
        try:
            second = check_scores(
                await self.second.ascore(query, [docs[i] for i in kept]), len(kept)
            )
        except RerankError as exc:
            raise _reindexed(exc, kept) from None
        return self._merge(first, kept, second)

    def __repr__(self) -> str:
        return f"Cascade({self.first!r}, {self.second!r}, keep={self.keep})"


def _reindexed(exc: RerankError, kept: Sequence[int]) -> RerankError:
    """``exc`` with its ``indices`` (positions among the kept documents) rewritten as
    positions in the caller's input."""
    indices = getattr(exc, "indices", None)
    if indices:
        exc.indices = tuple(kept[i] for i in indices if 0 <= i < len(kept))  # type: ignore[attr-defined]
    return exc
