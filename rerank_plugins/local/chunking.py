"""Past the window: token windows of a long document and the aggregate of their scores.

A document longer than the room the model's window leaves it is split into chunks of its
own tokens: chunk ``i`` is ``tokens[i * s : i * s + chunk_tokens]`` with stride
``s = chunk_tokens - chunk_overlap``, and the last chunk ends at the document's end (it may
be shorter). Each chunk is scored as its own pair with the query; the document's score is
an aggregate over its chunks: ``"max"`` (Cohere rerank v4's rule), ``"mean"``, or the mean
of the best two or three (``"top2"``, ``"top3"``).

Pure functions on lengths and floats: the encoders cut the token ids, the scorers call
:func:`aggregate` on the chunks' scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.scoring import OverflowPolicy

__all__ = [
    "AGGREGATES",
    "OVERFLOW_POLICIES",
    "Aggregate",
    "ChunkOptions",
    "aggregate",
    "check_aggregate",
    "check_overflow",
    "chunk_spans",
    "past_the_window_options",
]

Aggregate = Literal["max", "mean", "top2", "top3"]
"""How a chunked document's score comes from its chunks' scores."""

AGGREGATES: tuple[str, ...] = ("max", "mean", "top2", "top3")

OVERFLOW_POLICIES: tuple[str, ...] = ("truncate", "error", "chunk")
"""What a local scorer does with a document over its window: cut it (flagged), refuse it,
or score it in token windows."""


def check_overflow(value: object) -> OverflowPolicy:
    """``value`` if it is one of :data:`OVERFLOW_POLICIES`, else :class:`InvalidInputError`."""
    if value not in OVERFLOW_POLICIES:
        raise InvalidInputError(f"overflow must be one of {OVERFLOW_POLICIES}, got {value!r}")
    return value  # type: ignore[return-value]


def check_aggregate(value: object) -> Aggregate:
    """``value`` if it names an aggregate, else :class:`InvalidInputError`."""
    if value not in AGGREGATES:
        raise InvalidInputError(f"aggregate must be one of {list(AGGREGATES)}, got {value!r}")
    return value  # type: ignore[return-value]  # checked just above


def chunk_spans(n_tokens: int, chunk_tokens: int, overlap: int = 0) -> list[tuple[int, int]]:
    """The ``(start, stop)`` token spans of a document of ``n_tokens`` tokens.

    Chunk ``i`` starts at ``i * (chunk_tokens - overlap)`` and holds ``chunk_tokens``
    tokens, the last one ending at the document's end (shorter when the document does not
    fill it). A document of at most ``chunk_tokens`` tokens is one span.

    >>> chunk_spans(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    >>> chunk_spans(10, 4, 2)
    [(0, 4), (2, 6), (4, 8), (6, 10)]
    >>> chunk_spans(3, 4)
    [(0, 3)]
    """
    if chunk_tokens < 1:
        raise InvalidInputError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
    if overlap < 0 or overlap >= chunk_tokens:
        raise InvalidInputError(
            f"chunk_overlap must lie in 0..chunk_tokens-1 ({chunk_tokens - 1}), got {overlap}"
        )
    stride = chunk_tokens - overlap
    spans = [(0, min(chunk_tokens, n_tokens))]
    while spans[-1][1] < n_tokens:
        start = spans[-1][0] + stride
        spans.append((start, min(start + chunk_tokens, n_tokens)))
    return spans


def aggregate(values: Sequence[float], how: Aggregate = "max") -> float:
    """One document score from its chunks' scores.

    ``"max"``: the best chunk; ``"mean"``: all chunks alike; ``"top2"`` / ``"top3"``: the
    mean of the best two / three (of all chunks when there are fewer). A NaN anywhere gives
    NaN (the ranking step then names the document).

    >>> aggregate([0.1, 0.9, 0.5]), aggregate([0.1, 0.9, 0.5], "top2")
    (0.9, 0.7)
    >>> aggregate([1.0, 2.0, 6.0], "mean")
    3.0
    """
    if not values:
        raise InvalidInputError("aggregate needs at least one chunk score")
    if any(math.isnan(v) for v in values):
        return math.nan
    if how == "max":
        return max(values)
    if how == "mean":
        return math.fsum(values) / len(values)
    if how in ("top2", "top3"):
        best = sorted(values, reverse=True)[: int(how[3])]
        return math.fsum(best) / len(best)
    raise InvalidInputError(f"aggregate must be one of {list(AGGREGATES)}, got {how!r}")


class ChunkOptions:
    """The chunking options of a scorer, checked once.

    ``chunk_tokens``: document tokens per chunk (``None``: the largest that fits the window
    with the query, decided per call); ``chunk_overlap``: tokens shared by consecutive
    chunks (default 0); ``aggregate``: see :func:`aggregate`.
    """

    __slots__ = ("aggregate", "chunk_overlap", "chunk_tokens")

    def __init__(
        self,
        *,
        chunk_tokens: int | None = None,
        chunk_overlap: int = 0,
        aggregate: Aggregate = "max",
    ) -> None:
        if chunk_tokens is not None and (
            isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1
        ):
            raise InvalidInputError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
        if (
            isinstance(chunk_overlap, bool)
            or not isinstance(chunk_overlap, int)
            or chunk_overlap < 0
        ):
            raise InvalidInputError(
                f"chunk_overlap must be a non-negative int, got {chunk_overlap!r}"
            )
        if chunk_tokens is not None and chunk_overlap >= chunk_tokens:
            raise InvalidInputError(
                f"chunk_overlap ({chunk_overlap}) must be smaller than "
                f"chunk_tokens ({chunk_tokens})"
            )
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.aggregate: Aggregate = check_aggregate(aggregate)

    def size(self, room: int) -> int:
        """Tokens per chunk when ``room`` document tokens fit beside the query.

        Raises :class:`InvalidInputError` when ``chunk_tokens`` does not fit, or when the
        overlap leaves no stride at the default size.
        """
        size = room if self.chunk_tokens is None else self.chunk_tokens
        if size > room:
            raise InvalidInputError(
                f"chunk_tokens={size} does not fit the window beside this query "
                f"(room for {room} document tokens)"
            )
        if self.chunk_overlap >= size:
            raise InvalidInputError(
                f"chunk_overlap={self.chunk_overlap} leaves no stride in {size}-token chunks"
            )
        return size

    def __repr__(self) -> str:
        return (
            f"ChunkOptions(chunk_tokens={self.chunk_tokens}, "
            f"chunk_overlap={self.chunk_overlap}, aggregate={self.aggregate!r})"
        )


def past_the_window_options(
    overflow: str, chunking: ChunkOptions, max_document_tokens: int | None
) -> dict[str, object]:
    """The chunking and the per-document cap in force, for a scorer's ``identity()``
    (they change scores); empty when neither is."""
    options: dict[str, object] = {}
    if overflow == "chunk":
        options["chunking"] = (chunking.chunk_tokens, chunking.chunk_overlap, chunking.aggregate)
    if max_document_tokens is not None:
        options["max_tokens_per_doc"] = max_document_tokens
    return options
