"""Names on the wire shared by ``rerank-plugins serve`` and the remote client.

The server writes these headers on every dialect's answer (foreign JSON bodies have no
field for them); :class:`~rerank_plugins.remote.RemoteScorer` reads them back. The
environment variable is where both look for a bearer key.
"""

from __future__ import annotations

__all__ = ["API_KEY_ENV", "IGNORED_FIELDS_HEADER", "TOKENS_HEADER", "TRUNCATED_HEADER"]

TRUNCATED_HEADER = "X-Truncated-Documents"
"""Comma-separated indices (in the request) of the documents cut to fit the window."""

TOKENS_HEADER = "X-Document-Tokens"
"""Comma-separated token counts scored per document, in request order."""

IGNORED_FIELDS_HEADER = "X-Ignored-Fields"
"""Comma-separated names of the request's top-level fields the server does not know
(ignored, not refused, so clients of newer API versions keep working)."""

API_KEY_ENV = "RERANK_API_KEY"
"""The environment variable holding the bearer key (server side and client side)."""
