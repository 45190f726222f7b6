"""``FunctionScorer``: the in-process test double of the scoring seam."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rerank_plugins.scoring import Score, ScoreKind, check_inputs


class FunctionScorer:
    """A :class:`~rerank_plugins.Scorer` from a plain function ``fn(query, document) -> float``.

    The in-process test double of the scoring seam (like ``httpx.MockTransport`` is for
    transports): adapters and pipelines can be tested with scores you control. It
    validates its input like every scorer and counts its calls in ``calls``.
    """

    def __init__(self, fn: Callable[[str, str], float], *, kind: ScoreKind = "logit") -> None:
        self.fn = fn
        self.kind: ScoreKind = kind
        self.calls = 0

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        self.calls += 1
        return [Score(float(self.fn(query, d)), self.kind, tokens=None) for d in docs]

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        return self.score(query, documents)
