"""What a scorer *is*, for a record that must tell two runs apart (a bulk manifest).

A scorer may describe itself with ``identity()``: a JSON-able dict of everything that
changes its scores (the checkpoint's fingerprint, dtype, output kind, overflow, window,
exit layer/dim...; for an endpoint its URL without credentials, dialect and model name)
and nothing that does not (device, batch size, progress bars). Adapters ask through
:func:`scorer_identity` and never import a backend. No secret may appear in it: it is
written to plain files. :func:`file_digest` is the one way files are fingerprinted (inputs
and checkpoints).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "FULL_HASH_BYTES",
    "SAMPLES",
    "SAMPLE_BYTES",
    "IdentifiedScorer",
    "file_digest",
    "redact_url",
    "scorer_identity",
]

FULL_HASH_BYTES = 32 * 2**20
SAMPLE_BYTES = 64 * 2**10
SAMPLES = 16


def file_digest(path: Path, *, full_bytes: int = FULL_HASH_BYTES) -> str:
    """``sha256:HEX`` of a file's whole content when it has at most ``full_bytes`` bytes;
    else ``sampled:SIZE:HEX`` over its size, its head (a safetensors file's whole JSON
    header), its tail and :data:`SAMPLES` blocks of :data:`SAMPLE_BYTES` spread evenly."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= full_bytes:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return f"sha256:{digest.hexdigest()}"
        header = f.read(8)  # a safetensors header's length: its JSON is hashed whole
        digest.update(header)
        head = max(SAMPLE_BYTES, min(int.from_bytes(header, "little"), FULL_HASH_BYTES))
        digest.update(f.read(head))
        step = size // (SAMPLES + 1)
        for k in range(1, SAMPLES + 1):
            f.seek(k * step)
            digest.update(f.read(SAMPLE_BYTES))
        f.seek(max(size - SAMPLE_BYTES, 0))
        digest.update(f.read(SAMPLE_BYTES))
    return f"sampled:{size}:{digest.hexdigest()}"


@runtime_checkable
class IdentifiedScorer(Protocol):
    """A scorer that can say what it is (see the module docstring)."""

    def identity(self) -> dict[str, Any]: ...


def scorer_identity(scorer: object) -> dict[str, Any]:
    """``scorer.identity()``, or its class name for a scorer that has none (yours)."""
    if isinstance(scorer, IdentifiedScorer):
        return dict(scorer.identity())
    return {"scorer": f"<{type(scorer).__name__}>"}


def redact_url(url: str) -> str:
    """``url`` without its user info, query and fragment (where keys travel).

    >>> redact_url("https://user:pw@h:8080/v1/rerank?key=abc#x")
    'https://***@h:8080/v1/rerank'
    >>> redact_url("models/local")
    'models/local'
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL (bad port, brackets): keep nothing of it
        return "<unparsable URL>"
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        # The whole userinfo: a bare user name may itself be a token (https://TOKEN@host).
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
