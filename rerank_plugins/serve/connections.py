"""Connection limits of ``rerank-plugins serve``: what a slow or endless client may hold.

uvicorn bounds idle keep-alive connections (``keep_alive_timeout``) and, with
``limit_concurrency``, the connections and requests it takes at once (over it: 503, from
uvicorn, in plain text). It has no limit on the time a client may take to send its
headers, and h11 bounds only headers that arrive in pieces: :func:`bounded_h11` adds both
(``header_timeout``, also between requests on a kept-alive connection: the connection is
closed; ``max_header_bytes``: 400, from uvicorn, in plain text). The
body's time limit is the app's (``create_app(body_timeout=...)``: 408). The parser is h11
(not httptools), whose header limit holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

__all__ = ["ConnectionLimits", "bounded_h11", "uvicorn_config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """The defaults ``rerank-plugins serve`` documents (``serve --help``)."""

    header_timeout: float = 10.0
    """Seconds a client has to send a request's headers (closed after)."""
    body_timeout: float = 60.0
    """Seconds a request's body may take to arrive (408 after; the app's limit)."""
    keep_alive_timeout: int = 5
    """Seconds an idle kept-alive connection stays open (uvicorn's default)."""
    max_header_bytes: int = 16 * 1024
    """Bytes of request line and headers at most (h11's default; over: 400)."""
    limit_concurrency: int | None = 1000
    """Connections and requests taken at once (over: 503); ``None``: no cap."""


def bounded_h11(header_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose headers take over
    ``header_timeout`` seconds (from the connection, or from the previous answer), and
    answering 400 to headers over ``max_header_bytes``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # h11 bounds only a header block that arrives in pieces; this also bounds
            # one that arrives whole.
            if self.conn.their_state is h11.IDLE:
                pending = self.conn.trailing_data[0] + data
                end = pending.find(b"\r\n\r\n")
                if (len(pending) if end < 0 else end + 4) > max_header_bytes:
                    self.logger.warning("request headers over %d bytes", max_header_bytes)
                    self.send_400_response("Request headers too large.")
                    return
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # the headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return BoundedH11Protocol


def uvicorn_config(app: Any, *, limits: ConnectionLimits, **options: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with ``limits`` (``options`` go to uvicorn)."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=bounded_h11(limits.header_timeout, limits.max_header_bytes),
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keep_alive_timeout,
        limit_concurrency=limits.limit_concurrency,
        **options,
    )
