"""Query-document pair encoding with the Rust ``tokenizers`` library.

The query is encoded once, the documents in one batch call; each pair is assembled by the
tokenizer's own post-processor (so ``[CLS] q [SEP] d [SEP]`` for ModernBERT and
``<s> q </s></s> d </s>`` for XLM-R come from the checkpoint, not from us). Over the
window only the document is cut.

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
from rerank_plugins.scoring import OverflowPolicy

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = ["CHARS_PER_TOKEN", "EncodedPair", "PairEncoder", "encode_texts"]

logger = logging.getLogger(__name__)

_POLICIES = ("truncate", "error")

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


class PairEncoder:
    """Encodes ``(query, document)`` pairs to at most ``max_length`` tokens.

    ``overflow="truncate"`` cuts the document and flags the pair (logging one warning per
    encoder); ``overflow="error"`` raises :class:`InputTooLongError` naming the documents.
    A query that leaves no room for a single document token always raises.
    """

    def __init__(
        self, tokenizer: Tokenizer, *, max_length: int, overflow: OverflowPolicy = "truncate"
    ) -> None:
        if overflow not in _POLICIES:
            raise InvalidInputError(f"overflow must be one of {_POLICIES}, got {overflow!r}")
        if max_length < 4:
            raise InvalidInputError(f"max_length must be at least 4, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.overflow: OverflowPolicy = overflow
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
    ) -> list[EncodedPair]:
        """Encode every pair, in input order.

        ``overflow`` overrides the encoder's policy for this call. ``max_document_tokens``
        cuts every document to at most that many tokens (flagged as truncated) whatever
        the policy: an explicit cut asked by the caller (Cohere's ``max_tokens_per_doc``),
        not an overflow of the window.
        """
        policy = self.overflow if overflow is None else overflow
        if policy not in _POLICIES:
            raise InvalidInputError(f"overflow must be one of {_POLICIES}, got {policy!r}")
        if max_document_tokens is not None and max_document_tokens < 1:
            raise InvalidInputError(
                f"max_document_tokens must be at least 1, got {max_document_tokens}"
            )
        q = self.encode_query(query)
        room = self.max_length - self._specials - len(q)
        # One token past the room tells an over-long document; nothing further is read.
        docs = encode_texts(self.tokenizer, documents, need=room + 1)
        over = [i for i, d in enumerate(docs) if len(d) > room]
        if over and policy == "error":
            raise InputTooLongError(
                f"documents {over} exceed the {self.max_length}-token window "
                f"(query {len(q)} tokens, room for {room} document tokens)",
                indices=over,
            )
        if over and not self._warned:
            self._warned = True
            logger.warning(
                "%d document(s) exceed the %d-token window and were truncated "
                "(Score.truncated is set; pass overflow='error' to raise instead)",
                len(over),
                self.max_length,
            )
        keep = room if max_document_tokens is None else min(room, max_document_tokens)
        out = []
        for d in docs:
            cut = len(d) > keep
            if cut:
                d.truncate(keep)
            pair = self.tokenizer.post_process(q, d, add_special_tokens=True)
            out.append(EncodedPair(pair.ids, pair.type_ids, cut))
        return out
