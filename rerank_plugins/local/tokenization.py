"""Query-document pair encoding with the Rust ``tokenizers`` library.

The query is encoded once, the documents in one batch call; each pair is assembled by the
tokenizer's own post-processor (so ``[CLS] q [SEP] d [SEP]`` for ModernBERT and
``<s> q </s></s> d </s>`` for XLM-R come from the checkpoint, not from us). Over the
window only the document is cut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rerank_plugins.errors import InputTooLongError, InvalidInputError
from rerank_plugins.scoring import OverflowPolicy

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

__all__ = ["EncodedPair", "PairEncoder"]

logger = logging.getLogger(__name__)

_POLICIES = ("truncate", "error")


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
        q = self.tokenizer.encode(query, add_special_tokens=False)
        if len(q) + self._specials + 1 > self.max_length:
            raise InputTooLongError(
                f"the query is {len(q)} tokens long and leaves no room for a document in the "
                f"{self.max_length}-token window; shorten the query"
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
        docs = self.tokenizer.encode_batch(list(documents), add_special_tokens=False)
        room = self.max_length - self._specials - len(q)
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
