"""The seam between the framework adapters and every backend: ``Score`` and ``Scorer``."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from rerank_plugins.errors import InputTooLongError, InvalidInputError, RerankError, ScoringError

# The header names moved to rerank_plugins.wire; kept importable from here.
from rerank_plugins.wire import TOKENS_HEADER, TRUNCATED_HEADER  # noqa: F401

__all__ = [
    "AsyncScorer",
    "OverflowPolicy",
    "PairScorer",
    "PreparedPair",
    "Score",
    "ScoreKind",
    "Scorer",
    "ascore_groups",
    "check_documents",
    "check_inputs",
    "check_scores",
    "preemptible",
    "preemption_point",
    "score_groups",
    "takes_instruction",
    "with_instruction",
]

ScoreKind = Literal["probability", "logit", "maxsim"]

"""What a score's value means: a probability in 0..1, a raw logit, or a MaxSim sum/mean."""

OverflowPolicy = Literal["truncate", "error", "chunk"]
"""What happens to a document over the model's window: cut it (flagged), raise, or split
it into token windows scored apart and aggregated (``"chunk"``)."""

_KINDS: frozenset[str] = frozenset(("probability", "logit", "maxsim"))


@dataclass(frozen=True, slots=True)
class Score:
    """The relevance of one document to the query.

    ``value`` is the score (higher is more relevant), ``kind`` says what it means,
    ``tokens`` is how many tokens the model saw for this pair (``None`` when the
    backend does not say) and ``truncated`` is true when the input was cut to fit.

    ``chunks`` is how many token windows a document longer than the model's window was
    split into (``overflow="chunk"``; ``value`` is then the aggregate of their scores and
    ``tokens`` the sum of their lengths); ``None`` for a document scored whole.
    ``stage`` is set by cascades (:class:`~rerank_plugins.cascade.scorer.Cascade`, a
    ``MatryoshkaScorer`` with ``keep``): how many stages past the first scored this
    document (0: only the cheap first stage). :func:`~rerank_plugins.ranking.rank` puts a
    later stage before an earlier one whatever the values; ``None`` counts as 0.
    """

    value: float
    kind: ScoreKind
    tokens: int | None = None
    truncated: bool = False
    chunks: int | None = None
    stage: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Score.kind must be one of {sorted(_KINDS)}, got {self.kind!r}")


@runtime_checkable
class Scorer(Protocol):
    """Scores documents against a query.

    Both methods return exactly one :class:`Score` per document, in input order, or raise
    a :class:`~rerank_plugins.errors.RerankError` that names the failing documents.
    """

    def score(self, query: str, documents: Sequence[str]) -> list[Score]: ...

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]: ...


class AsyncScorer(Protocol):
    """What :func:`ascore_groups` needs: the async half of :class:`Scorer`."""

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]: ...


class PreparedPair(Protocol):
    """One ``(query, document)`` pair made ready by :meth:`PairScorer.encode_pairs`."""

    @property
    def tokens(self) -> int:
        """Length in tokens: what the pair costs in a batch."""
        ...

    @property
    def truncated(self) -> bool: ...


@runtime_checkable
class PairScorer(Scorer, Protocol):
    """A scorer whose work splits in two, so that a server can batch across requests.

    ``encode_pairs`` prepares one query's documents (tokenisation, the overflow check:
    raises as ``score`` would); ``score_pairs`` scores any prepared pairs together,
    whatever query each came from, in their order. ``score(q, d)`` equals
    ``score_pairs(encode_pairs(q, d))``. ``raw=True`` asks for the model's raw output
    (a logit) where the scorer's usual score is a transformation of it. ``score_batch``
    is for a caller that forms its own batches (a server's batcher) by the scorer's
    token budget, costed as ``padded`` says.
    """

    def encode_pairs(
        self,
        query: str,
        documents: Sequence[str],
        *,
        overflow: OverflowPolicy | None = None,
        max_document_tokens: int | None = None,
    ) -> Sequence[PreparedPair]: ...

    def score_pairs(self, pairs: Sequence[Any], *, raw: bool = False) -> list[Score]: ...

    def score_batch(self, pairs: Sequence[Any], *, raw: bool = False) -> list[Score]:
        """Like ``score_pairs`` for pairs that already form one budgeted batch: one
        forward, no re-budgeting, no re-sorting."""
        ...

    @property
    def padded(self) -> bool:
        """How a batch is costed: ``len(batch) * longest`` (True) or the sum of lengths."""
        ...


_preemption = threading.local()


def preemption_point() -> None:
    """Where a long forward may give way: engines call it between layers.

    Runs the hook that :func:`preemptible` installed on the calling thread (a batcher
    runs the short requests that wait there, so that they need not wait for the whole
    forward of a long one), else nothing. The hook never runs inside itself.
    """
    hook = getattr(_preemption, "hook", None)
    if hook is not None:
        _preemption.hook = None
        try:
            hook()
        finally:
            _preemption.hook = hook


@contextmanager
def preemptible(hook: Callable[[], None] | None) -> Iterator[None]:
    """Install ``hook`` for :func:`preemption_point` on this thread while the block runs."""
    previous = getattr(_preemption, "hook", None)
    _preemption.hook = hook
    try:
        yield
    finally:
        _preemption.hook = previous


def takes_instruction(scorer: object) -> bool:
    """Whether ``scorer.score`` / ``ascore`` take ``instruction=`` (decoder rerankers).

    A scorer says so with a ``takes_instruction`` class attribute
    (:class:`~rerank_plugins.local.decoder.DecoderScorer` sets it); one without the
    attribute is judged by ``score``'s signature."""
    declared = getattr(scorer, "takes_instruction", None)
    if declared is not None:
        return bool(declared)
    try:
        return "instruction" in inspect.signature(scorer.score).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):  # no score, or no signature
        return False


def with_instruction(scorer: Scorer, instruction: str | None, *, option: str) -> Scorer:
    """``scorer`` with ``instruction`` bound into every call (``scorer`` itself for None).

    Raises :class:`InvalidInputError` naming ``option`` (what the caller set) when the
    scorer takes no instruction: it is never dropped silently."""
    if instruction is None:
        return scorer
    if not isinstance(instruction, str):
        raise InvalidInputError(f"{option} must be a str, got {type(instruction).__name__}")
    if not takes_instruction(scorer):
        raise InvalidInputError(
            f"{option} is set but this scorer ({type(scorer).__name__}) takes no instruction: "
            "only decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2) do, and endpoints "
            "whose API has an instruction field (dialects cohere, tei, sglang)"
        )
    return _Instructed(scorer, instruction)


class _Instructed:
    """A scorer seen through one instruction (what :func:`score_groups` calls)."""

    def __init__(self, scorer: Scorer, instruction: str) -> None:
        self._scorer = scorer
        self._instruction = instruction

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        result: list[Score] = self._scorer.score(  # type: ignore[call-arg]
            query, documents, instruction=self._instruction
        )
        return result

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        result: list[Score] = await self._scorer.ascore(  # type: ignore[call-arg]
            query, documents, instruction=self._instruction
        )
        return result


def check_inputs(query: object, documents: object) -> list[str]:
    """Validate a scorer's inputs and return the documents as a fresh list.

    Raises :class:`InvalidInputError` for a query that is not a non-blank string, and as
    :func:`check_documents` for the documents.
    """
    if not isinstance(query, str):
        raise InvalidInputError(f"query must be a str, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("query is empty")
    if not _is_unicode_text(query):
        raise InvalidInputError("the query holds lone surrogates: it is not valid Unicode text")
    return check_documents(documents)


def check_documents(documents: object) -> list[str]:
    """Validate documents and return them as a fresh list.

    Raises :class:`InvalidInputError` for ``documents`` that is not a sequence (a bare
    string counts as a mistake) and for documents that are not strings (their indices are
    listed) or hold lone surrogates. Empty-string documents are valid: they are scored
    like any other text.
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError(
            f"documents must be a sequence of str, got {type(documents).__name__}"
        )
    bad = [i for i, doc in enumerate(documents) if not isinstance(doc, str)]
    if bad:
        kinds = sorted({type(documents[i]).__name__ for i in bad})
        raise InvalidInputError(
            f"documents at indices {bad} are not str ({', '.join(kinds)})", indices=bad
        )
    # Lone surrogates ("\ud800") are valid str but no tokenizer or HTTP body takes them.
    if _is_unicode_text("".join(documents)):  # one pass for the common case
        return list(documents)
    bad = [i for i, doc in enumerate(documents) if not _is_unicode_text(doc)]
    if bad:
        raise InvalidInputError(
            f"documents at indices {bad[:20]} hold lone surrogates: not valid Unicode text",
            indices=bad,
        )
    return list(documents)


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_scores(scores: object, n_documents: int) -> list[Score]:
    """Check that a backend kept the contract: a list of ``n_documents`` :class:`Score`.

    Raises :class:`ScoringError` otherwise (a scorer that drops or adds results would
    silently lose documents further up).
    """
    if not isinstance(scores, list) or len(scores) != n_documents:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise ScoringError(
            f"the scorer returned {got} results for {n_documents} documents",
            indices=range(n_documents),
        )
    bad = [i for i, s in enumerate(scores) if not isinstance(s, Score)]
    if bad:
        raise ScoringError(f"the scorer returned non-Score results at {bad}", indices=bad)
    return scores


Group = tuple[str, Sequence[str]]
"""One query and its documents."""


class _GroupPlan:
    """The bookkeeping of :func:`score_groups`: which call each document goes to, and back."""

    def __init__(self, groups: object) -> None:
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise InvalidInputError(
                f"groups must be a sequence of (query, documents), got {type(groups).__name__}"
            )
        self.groups: list[Group] = []
        for n, group in enumerate(groups):
            if not isinstance(group, (tuple, list)) or len(group) != 2:
                raise InvalidInputError(f"groups[{n}] is not a (query, documents) pair")
            self.groups.append((group[0], group[1]))
        self.out: list[list[Score | None]] = [[None] * len(d) for _, d in self.groups]
        self.offsets: list[int] = []
        total = 0
        for _, documents in self.groups:
            self.offsets.append(total)
            total += len(documents)

    def calls(self) -> list[tuple[str, list[tuple[int, int]], list[str]]]:
        """One ``(query, slots, documents)`` per distinct query, in order of first use."""
        merged: dict[str, list[tuple[int, int]]] = {}
        for g, (query, documents) in enumerate(self.groups):
            if not isinstance(query, str):  # as the scorer would say; also never a dict key
                raise InvalidInputError(
                    f"query must be a str, got {type(query).__name__}",
                    indices=range(self.offsets[g], self.offsets[g] + len(documents)),
                )
            merged.setdefault(query, []).extend((g, i) for i in range(len(documents)))
        return [
            (query, slots, [self.groups[g][1][i] for g, i in slots])
            for query, slots in merged.items()
        ]

    def place(self, slots: list[tuple[int, int]], scores: object) -> None:
        checked = check_scores(scores, len(slots))
        for (g, i), s in zip(slots, checked, strict=True):
            self.out[g][i] = s

    def reindex(self, exc: RerankError, slots: list[tuple[int, int]]) -> None:
        """Rewrite ``exc.indices`` (positions in one call) as positions in the input."""
        indices = getattr(exc, "indices", None)
        if indices:
            exc.indices = tuple(  # type: ignore[attr-defined]
                self.offsets[slots[i][0]] + slots[i][1] for i in indices if 0 <= i < len(slots)
            )

    def result(self) -> list[list[Score]]:
        return self.out  # type: ignore[return-value]  # place() filled every slot


def score_groups(scorer: Scorer, groups: Sequence[Group]) -> list[list[Score]]:
    """Score ``(query, documents)`` groups: the one scoring step every adapter uses.

    Groups that share a query are merged so that each distinct query's documents go to
    the scorer in **one** call (the engine packs them together); each call's scores are
    checked (:func:`check_scores`) and scattered back, so the result holds one list per
    group, one :class:`Score` per document, in input order. Pairs are groups of one
    document. A :class:`RerankError` from a call is re-raised with its ``indices``
    rewritten as positions in the flattened input (group after group).

    Examples:
        >>> from rerank_plugins.testing import FunctionScorer
        >>> s = FunctionScorer(lambda q, d: float(len(d)))
        >>> out = score_groups(s, [("q", ["aa", "b"]), ("q", ["ccc"])])
        >>> [len(g) for g in out], out[0][1].value, out[1][0].value, s.calls
        ([2, 1], 1.0, 3.0, 1)
    """
    plan = _GroupPlan(groups)
    for query, slots, documents in plan.calls():
        try:
            plan.place(slots, scorer.score(query, documents))
        except RerankError as exc:
            plan.reindex(exc, slots)
            raise
    return plan.result()


async def ascore_groups(
    scorer: AsyncScorer, groups: Sequence[Group], *, concurrent: bool = False
) -> list[list[Score]]:
    """The async twin of :func:`score_groups` (calls ``scorer.ascore``).

    With ``concurrent=True`` the calls for the distinct queries run together (a server
    then merges them into shared batches); every call finishes before an error is
    raised: the first failing call's (in input order), or, when every failure is an
    :class:`InputTooLongError`, one that lists all their documents.
    """
    plan = _GroupPlan(groups)
    calls = plan.calls()
    if not concurrent:
        for query, slots, documents in calls:
            try:
                plan.place(slots, await scorer.ascore(query, documents))
            except RerankError as exc:
                plan.reindex(exc, slots)
                raise
        return plan.result()
    results = await asyncio.gather(
        *(scorer.ascore(query, documents) for query, _, documents in calls),
        return_exceptions=True,
    )
    failures: list[BaseException] = []
    for (_, slots, _), result in zip(calls, results, strict=True):
        if isinstance(result, BaseException):
            if isinstance(result, RerankError):
                plan.reindex(result, slots)
            failures.append(result)
            continue
        try:
            plan.place(slots, result)
        except RerankError as exc:
            plan.reindex(exc, slots)
            failures.append(exc)
    if failures:
        raise _merged(failures)
    return plan.result()


def _merged(failures: list[BaseException]) -> BaseException:
    if len(failures) == 1 or not all(isinstance(f, InputTooLongError) for f in failures):
        return failures[0]
    indices = sorted(i for f in failures for i in getattr(f, "indices", ()))
    return InputTooLongError(
        f"documents {indices} exceed the model's token window and truncation is off "
        f"(first: {failures[0]})",
        indices=indices,
    )
