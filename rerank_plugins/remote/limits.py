"""Bounds on what a server can make the client do: response size (decoded) and time.

A rerank answer is small (a number per document, maybe the text echoed back), so the
client reads the body itself, raw, and decompresses it here with a ceiling on the output:
a 300 MB body, an endless one or a gzip bomb costs at most ``cap`` bytes of memory.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence

__all__ = [
    "BodyTooLarge",
    "BodyUndecodable",
    "BoundedBody",
    "Deadline",
    "default_response_cap",
]

_MIN_CAP = 1 << 20  # 1 MiB: room for any error page or a large batch's scores
_PER_DOCUMENT = 512  # {"index": 123, "relevance_score": 0.123..., ...} with slack


def default_response_cap(request_bytes: int, n_documents: int) -> int:
    """The largest answer a request can sensibly get: its documents echoed back twice
    (JSON escaping can double text) plus a score object per document and 1 MiB.

    >>> default_response_cap(0, 0)
    1048576
    """
    return _MIN_CAP + 2 * request_bytes + _PER_DOCUMENT * n_documents


class BodyTooLarge(Exception):
    """Internal: the decoded body passed the cap."""

    def __init__(self, cap: int, *, declared: int | None = None) -> None:
        super().__init__(cap)
        self.cap = cap
        self.declared = declared


class BodyUndecodable(Exception):
    """Internal: the ``Content-Encoding`` is unknown or the compressed data is corrupt."""


class BoundedBody:
    """Collects a response body from raw chunks, decoding ``Content-Encoding`` (gzip,
    deflate, identity; several in a row) and raising :class:`BodyTooLarge` as soon as
    the decoded size would pass ``cap``. Memory stays below ``cap`` plus one chunk."""

    def __init__(self, content_encoding: str | None, cap: int) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._size = 0
        names = [e.strip().lower() for e in (content_encoding or "").split(",")]
        self._decoders: list[zlib._Decompress] = []
        # Encodings are listed in the order they were applied: undo them in reverse.
        for name in reversed([n for n in names if n and n != "identity"]):
            if name in ("gzip", "x-gzip"):
                self._decoders.append(zlib.decompressobj(16 + zlib.MAX_WBITS))
            elif name == "deflate":
                self._decoders.append(zlib.decompressobj(32 + zlib.MAX_WBITS))  # zlib or gzip
            else:
                raise BodyUndecodable(f"unsupported Content-Encoding {name!r}")

    @staticmethod
    def check_declared(content_length: str | None, cap: int) -> None:
        """Refuse before reading when ``Content-Length`` already says it is too large."""
        if content_length is None:
            return
        try:
            declared = int(content_length)
        except ValueError:
            return  # h11 refuses malformed lengths itself
        if declared > cap:
            raise BodyTooLarge(cap, declared=declared)

    def feed(self, chunk: bytes) -> None:
        data = chunk
        for decoder in self._decoders:
            data = self._inflate(decoder, data)
        self._add(data)

    def finish(self) -> bytes:
        data = b""
        for decoder in self._decoders:
            try:
                data = self._inflate(decoder, data) + decoder.flush()
            except zlib.error as exc:
                raise BodyUndecodable(f"corrupt compressed body: {exc}") from exc
        self._add(data)
        return b"".join(self._parts)

    def _inflate(self, decoder: zlib._Decompress, data: bytes) -> bytes:
        room = self.cap - self._size + 1
        try:
            out = decoder.decompress(data, room)
        except zlib.error as exc:
            raise BodyUndecodable(f"corrupt compressed body: {exc}") from exc
        if decoder.unconsumed_tail or len(out) >= room:  # more output than the cap allows
            raise BodyTooLarge(self.cap)
        return out

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.cap:
            raise BodyTooLarge(self.cap)
        if data:
            self._parts.append(data)


class Deadline:
    """An absolute end time (``time.monotonic()``) shared by every request of one call."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def cap(self, timeouts: Sequence[float | None]) -> list[float]:
        """Each timeout, never beyond what is left of the deadline (and never 0, which
        httpx would read as "no wait at all" and fail confusingly)."""
        left = max(self.remaining(), 0.001)
        return [min(math.inf if t is None else t, left) for t in timeouts]
