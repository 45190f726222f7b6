"""ASGI middleware of the server: access log and metrics, API key, body limit.

Pure ASGI (not ``BaseHTTPMiddleware``): a disconnecting client stays visible to the
handlers, which cancel its queued work.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import SecretStr

from rerank_plugins.serve.handlers import error_response
from rerank_plugins.serve.metrics import METHODS, Metrics

__all__ = ["ROUTES", "AccessLog", "BearerKey", "BodyLimit", "header"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("rerank_plugins.serve.access")

ROUTES = frozenset(
    {"/v1/rerank", "/v2/rerank", "/rerank", "/score", "/v1/score", "/health", "/metrics"}
    | {"/v1/models", "/openapi.json", "/docs", "/redoc"}
)
"""Paths named in metrics and logs as they are (any other path is ``"other"``)."""
_CUT = "the server shut down before the answer was ready (--graceful-timeout)"
_OPEN_PATHS = frozenset({"/health"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class AccessLog:
    """One structured log line per request (no bodies, no headers) and request metrics."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope["rerank.request_id"] = rid
        status = 500
        start = time.perf_counter()

        path = scope["path"] if scope["path"] in ROUTES else "other"
        method = scope["method"] if scope["method"] in METHODS else "other"
        started = False

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # The server cancels what is still running when --graceful-timeout is over.
            logger.warning("request %s cut by the shutdown (--graceful-timeout): answered 503", rid)
            if not started:
                await error_response(503, "Unhealthy", _CUT)(scope, receive, send_with_id)
        except Exception as exc:
            # One line, without a traceback or the error's text: either may quote the
            # request. (Errors the package raises have their own handlers.)
            logger.error("%s %s failed: unhandled %s", method, path, type(exc).__name__)
            if not started:
                answer = error_response(500, "Backend", f"internal error: {type(exc).__name__}")
                await answer(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            state = scope.get("state") or {}
            if path not in ("/metrics", "/health"):
                self.metrics.observe_http(method, path, status, seconds)
            access_logger.info(
                json.dumps(
                    {
                        "method": method,
                        "path": path,
                        "status": status,
                        "documents": state.get("documents"),
                        "tokens": state.get("tokens"),
                        "latency_ms": round(seconds * 1e3, 2),
                        "request_id": rid,
                    }
                )
            )


class BearerKey:
    """``Authorization: Bearer KEY`` on every path but ``/health`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, *, key: SecretStr | None) -> None:
        self.app = app
        self.key = key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = (header(scope, b"authorization") or "").encode("latin-1")
        scheme, _, token = given.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        if not ok:
            response = error_response(
                401, "Unauthorized", "missing or wrong API key (Authorization: Bearer)"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Reads the body up to ``max_bytes`` (413 beyond) within ``timeout`` seconds (408
    after), then replays it to the app."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        too_big = error_response(413, "Validation", f"request body over {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._read(receive)
        except TimeoutError:
            slow = error_response(
                408, "Validation", f"the request body did not arrive within {self.timeout:g} s"
            )
            slow.headers["Connection"] = "close"
            await slow(scope, receive, send)
            return
        if body is None:
            return  # the client left
        if len(body) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Any) -> bytes | None:
        """The body (cut just past ``max_bytes``), or None if the client disconnected."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > self.max_bytes or not message.get("more_body"):
                return b"".join(chunks)


def header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
