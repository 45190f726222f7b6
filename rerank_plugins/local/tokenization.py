"""Query-document pair encoding with the Rust ``tokenizers`` library.

The query is encoded once, the documents in one batch call; each pair is assembled by the
tokenizer's own post-processor (so ``[CLS] q [SEP] d [SEP]`` for ModernBERT and
``<s> q </s></s> d </s>`` for XLM-R come from the checkpoint, not from us). Over the
window only the document is cut, or (``overflow="chunk"``) split into token windows, each
assembled with the query as its own pair (:class:`ChunkedPair`).

The tokenizer boundary (:func:`encode_texts`) is where hostile text is met: a text far
longer than the window is cut to a character bound before it is tokenized (a 30 MB
document costs what the window costs, not gigabytes of token offsets), and a tokenizer
that fails or panics (pyo3's ``PanicException`` is a ``BaseException``) becomes an
:class:`~rerank_plugins.errors.InvalidInputError` naming the texts it failed on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rerank_plugins.errors import InputTooLongError, InvalidInputError
from rerank_plugins.local.chunking import Aggregate, ChunkOptions, check_overflow, chunk_spans
from rerank_plugins.scoring import OverflowPolicy

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = [
    "CHARS_PER_TOKEN",
    "ChunkedPair",
    "EncodedPair",
    "PairEncoder",
    "check_max_document_tokens",
    "encode_texts",
]

logger = logging.getLogger(__name__)


CHARS_PER_TOKEN = 8
"""The first cut: ``need * CHARS_PER_TOKEN`` characters (English averages about 4 per
token). A cut that yields too few tokens is retried with twice as many characters, so the
guess costs time on odd text (long runs of whitespace), never a wrong token."""

_MARGIN = 16
"""Tokens past ``need`` that a cut must yield: the cut's last word may tokenize otherwise
than in the whole text, so it must lie beyond the tokens used."""


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], *, need: int | None = None
) -> list[Encoding]:
    """Encode ``texts`` without special tokens, in order.

    With ``need``, a long text is encoded only as far as its first ``need`` tokens
    require: the encoding's first ``need`` tokens are the whole text's, and it holds fewer
    than ``need`` only when it is the whole text. Raises :class:`InvalidInputError` with
    the ``indices`` of the texts the tokenizer fails or panics on.
    """
    texts = list(texts)
    if need is None:
        return _encode_batch(tokenizer, texts, list(range(len(texts))))
    out: list[Encoding | None] = [None] * len(texts)
    limit = (need + _MARGIN) * CHARS_PER_TOKEN
    pending = list(range(len(texts)))
    while pending:
        cuts = [texts[i][:limit] for i in pending]
        retry = []
        for i, cut, encoding in zip(
            pending, cuts, _encode_batch(tokenizer, cuts, pending), strict=True
        ):
            if len(cut) == len(texts[i]) or len(encoding) > need + _MARGIN:
                out[i] = encoding
            else:
                retry.append(i)
        pending, limit = retry, limit * 2
    return out  # type: ignore[return-value]  # every slot is filled


def _encode_batch(tokenizer: Tokenizer, texts: list[str], positions: list[int]) -> list[Encoding]:
    try:
        return _guarded(tokenizer.encode_batch, texts)
    except _TokenizerFailure:
        if len(texts) == 1:
            bad = positions
        else:  # find the texts it fails on, one by one
            bad = []
            for text, position in zip(texts, positions, strict=True):
                try:
                    _guarded(tokenizer.encode_batch, [text])
                except _TokenizerFailure:
                    bad.append(position)
        raise InvalidInputError(
            f"the tokenizer failed on documents {bad[:20]}", indices=bad
        ) from None


class _TokenizerFailure(Exception):
    pass


def _guarded(call: Any, texts: list[str]) -> list[Encoding]:
    try:
        return list(call(texts, add_special_tokens=False))
    except Exception as exc:  # the Rust library raises bare Exceptions
        logger.debug("tokenizer failure: %s", exc)
        raise _TokenizerFailure(str(exc)) from exc
    except BaseException as exc:  # pyo3_runtime.PanicException: a Rust panic
        if type(exc).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit: not the text's fault
        logger.warning("the tokenizer panicked (%s)", exc)
        raise _TokenizerFailure(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class EncodedPair:
    """Token ids of one query-document pair, ready for the model."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool

    @property
    def tokens(self) -> int:
        """The pair's length in tokens (special tokens included)."""
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class ChunkedPair:
    """A document longer than the window as its token windows, each paired with the query.

    ``chunks`` are scored like any pair (in the same packed batches) and the document's
    score is ``aggregate`` over theirs. ``truncated`` is true only when
    ``max_document_tokens`` cut the document before it was split.
    """

    chunks: tuple[EncodedPair, ...]
    truncated: bool
    aggregate: Aggregate

    @property
    def tokens(self) -> int:
        """Tokens of all the chunks' pairs: what the document costs in batches."""
        return sum(len(c.ids) for c in self.chunks)


def check_max_document_tokens(value: object) -> int | None:
    """``value`` if it is ``None`` or a positive int, else :class:`InvalidInputError`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidInputError(f"max_document_tokens must be a positive int, got {value!r}")
    return value


class PairEncoder:
    """Encodes ``(query, document)`` pairs to at most ``max_length`` tokens.

    ``overflow="truncate"`` cuts the document and flags the pair (logging one warning per
    encoder); ``overflow="error"`` raises :class:`InputTooLongError` naming the documents;
    ``overflow="chunk"`` splits it into token windows (``chunking``, see
    :mod:`rerank_plugins.local.chunking`) and gives a :class:`ChunkedPair`.
    ``max_document_tokens`` cuts every document to its first N tokens first (flagged),
    whatever the policy. A query that leaves no room for a single document token always
    raises.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        max_length: int,
        overflow: OverflowPolicy = "truncate",
        chunking: ChunkOptions | None = None,
        max_document_tokens: int | None = None,
    ) -> None:
        check_overflow(overflow)
        if max_length < 4:
            raise InvalidInputError(f"max_length must be at least 4, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.overflow: OverflowPolicy = overflow
        self.chunking = ChunkOptions() if chunking is None else chunking
        self.max_document_tokens = check_max_document_tokens(max_document_tokens)
        self._specials = tokenizer.num_special_tokens_to_add(is_pair=True)
        self._warned = False

    def encode_query(self, query: str) -> Encoding:
        try:
            (q,) = encode_texts(self.tokenizer, [query], need=self.max_length)
        except InvalidInputError as exc:
            raise InvalidInputError(f"the tokenizer failed on the query: {exc}") from exc
        if len(q) + self._specials + 1 > self.max_length:
            at_least = "at least " if len(q) >= self.max_length else ""
            raise InputTooLongError(
                f"the query is {at_least}{len(q)} tokens long and leaves no room for a "
                f"document in the {self.max_length}-token window; shorten the query"
            )
        return q

    def encode(
        self,
        query: str,
        documents: Sequence[str],
        *,
        overflow: OverflowPolicy | None = None,
        max_document_tokens: int | None = None,
    ) -> list[EncodedPair | ChunkedPair]:
        """Encode every pair, in input order (a :class:`ChunkedPair` for a document split
        into windows).

        ``overflow`` overrides the encoder's policy for this call. ``max_document_tokens``
        (default: the encoder's) cuts every document to at most that many tokens (flagged
        as truncated) before the policy applies: an explicit cut asked by the caller
        (Cohere's ``max_tokens_per_doc``), not an overflow of the window.
        """
        policy = self.overflow if overflow is None else overflow
        check_overflow(policy)
        cap = check_max_document_tokens(
            self.max_document_tokens if max_document_tokens is None else max_document_tokens
        )
        q = self.encode_query(query)
        room = self.max_length - self._specials - len(q)
        # Tokenise only what can be used (one token past it tells a longer text): the cap,
        # or the room beside the query; a chunked document is read whole (up to the cap).
        if policy == "chunk":
            need = None if cap is None else cap + 1
        else:
            need = min(room, room if cap is None else cap) + 1
        docs = encode_texts(self.tokenizer, documents, need=need)
        capped = [cap is not None and len(d) > cap for d in docs]
        for d, cut in zip(docs, capped, strict=True):
            if cut and cap is not None:
                d.truncate(cap)
        over = [i for i, d in enumerate(docs) if len(d) > room]
        if over and policy == "error":
            raise InputTooLongError(
                f"documents {over} exceed the {self.max_length}-token window "
                f"(query {len(q)} tokens, room for {room} document tokens)",
                indices=over,
            )
        if over and policy == "truncate" and not self._warned:
            self._warned = True
            logger.warning(
                "%d document(s) exceed the %d-token window and were truncated "
                "(Score.truncated is set; pass overflow='error' to raise, or 'chunk' to "
                "score them in windows)",
                len(over),
                self.max_length,
            )
        size = self.chunking.size(room) if over and policy == "chunk" else room
        out: list[EncodedPair | ChunkedPair] = []
        for d, cut in zip(docs, capped, strict=True):
            if len(d) > room and policy == "chunk":
                out.append(self._chunked(q, d, size, cut))
                continue
            if len(d) > room:
                d.truncate(room)
                cut = True
            pair = self.tokenizer.post_process(q, d, add_special_tokens=True)
            out.append(EncodedPair(pair.ids, pair.type_ids, cut))
        return out

    def _chunked(self, q: Encoding, d: Encoding, size: int, capped: bool) -> ChunkedPair:
        """``d`` (longer than ``size``) as windows of ``size`` tokens, each paired with ``q``.

        The first window goes through the tokenizer's post-processor; the others reuse its
        frame (the special tokens and query around the document's tokens), which a
        template post-processor lays out the same for every window.
        """
        ids = list(d.ids)
        spans = chunk_spans(len(ids), size, self.chunking.chunk_overlap)
        d.truncate(size)
        first = self.tokenizer.post_process(q, d, add_special_tokens=True)
        where = [i for i, s in enumerate(first.sequence_ids) if s == 1]
        if len(where) != size or where[-1] - where[0] != size - 1:
            raise InvalidInputError(  # a post-processor that is not a template
                "this tokenizer's pair post-processor does not keep the document's tokens "
                "in one run; overflow='chunk' cannot frame windows for it"
            )
        head, tail = where[0], where[-1] + 1
        doc_type = first.type_ids[head]
        chunks = []
        for start, stop in spans:
            n = stop - start
            chunks.append(
                EncodedPair(
                    first.ids[:head] + ids[start:stop] + first.ids[tail:],
                    first.type_ids[:head] + [doc_type] * n + first.type_ids[tail:],
                    False,
                )
            )
        return ChunkedPair(tuple(chunks), capped, self.chunking.aggregate)
