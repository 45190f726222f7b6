"""Document token vectors and their bounded cache (reranking the same candidates for
many queries then encodes each document once)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from rerank_plugins.errors import InvalidInputError

__all__ = ["DEFAULT_CACHE_BYTES", "DocumentVectorCache", "TokenVectors"]

DEFAULT_CACHE_BYTES = 256 * 2**20
"""Default bound of a scorer's document-vector cache: 256 MiB (about 1,700 documents of
300 tokens at 128 fp32 values per token)."""


@dataclass(frozen=True, eq=False)
class TokenVectors:
    """The token vectors of one encoded text.

    ``vectors`` is fp32 ``[n, dim]``, L2-normalised rows, on the scorer's device (for a
    document: its tokens minus the skiplist; for a query: every token, expansion tokens
    included). ``tokens`` is the length of the sequence the encoder saw (prefix and
    special tokens included; summed over the windows of a chunked document, whose
    ``chunks`` says how many) and ``truncated`` whether the text was cut to fit it.
    """

    vectors: torch.Tensor
    tokens: int
    truncated: bool
    chunks: int | None = None  # windows of a document longer than document_length

    @property
    def nbytes(self) -> int:
        return int(self.vectors.numel() * self.vectors.element_size())


class DocumentVectorCache:
    """A bounded, thread-safe LRU cache of document :class:`TokenVectors`.

    Size is the bytes of the stored vectors, at most ``max_bytes``: storing an entry first
    evicts the least recently used ones (a hit refreshes an entry) until it fits; an entry
    larger than ``max_bytes`` is not stored. Keys are built by the scorer from the model
    (checkpoint, device, dtype, prefix, skiplist), the document length settings and a
    fixed-size digest of the document text (never the text itself), so one cache can be
    shared by several scorers. Vectors live on the scorer's device (GPU memory on CUDA).
    ``hits``, ``misses`` and ``evictions`` count what happened since creation or :meth:`clear`.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise InvalidInputError(f"max_bytes must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, TokenVectors] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> TokenVectors | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, value: TokenVectors) -> None:
        size = value.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[key] = value
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes of vectors held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return (
            f"DocumentVectorCache(entries={len(self)}, nbytes={self._bytes}, "
            f"max_bytes={self.max_bytes})"
        )
