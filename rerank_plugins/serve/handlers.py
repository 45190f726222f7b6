"""Errors to HTTP answers: one JSON error body (:class:`ErrorBody`) for every failure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from rerank_plugins.batching.batcher import BatcherClosedError, QueueFullError, RequestTooLargeError
from rerank_plugins.errors import InputTooLongError, InvalidInputError, RerankError
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.serve.schemas import ErrorBody

__all__ = [
    "ERROR_RESPONSES",
    "ClientGone",
    "error_response",
    "install_error_handlers",
    "validation_message",
]

logger = logging.getLogger("rerank_plugins.serve.app")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "missing or wrong API key"),
        (408, "the body did not arrive within the body timeout"),
        (413, "too many documents or tokens, body too large, or documents over the window"),
        (422, "invalid request (a field, NaN, a lone surrogate, no JSON Content-Type)"),
        (429, "queue full: retry after Retry-After seconds"),
        (500, "the model returned NaN or infinite scores (indices), or an internal error"),
        (503, "shutting down, or cut by the shutdown's graceful timeout"),
    )
}
"""The error answers every scoring endpoint documents (OpenAPI ``responses``)."""


_MAX_LISTED = 10


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(
    status: int, kind: str, message: str, indices: Sequence[int] = ()
) -> JSONResponse:
    """The JSON error body, with ``indices`` naming the documents at fault."""
    body = ErrorBody(error=message, error_type=kind, message=message, indices=list(indices))
    return JSONResponse(body.model_dump(), status_code=status)


def validation_message(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: where and what, never the input itself."""
    parts = []
    for error in list(errors)[:_MAX_LISTED]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    more = len(errors) - _MAX_LISTED
    return "invalid request: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map errors to status codes (404, 405, 413, 422, 429, 503, 499, 500), each answered
    with the one JSON error body."""

    async def unvalidated(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "Validation", validation_message(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        phrase = HTTPStatus(exc.status_code).phrase
        response = error_response(exc.status_code, phrase.replace(" ", ""), str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    async def too_long(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputTooLongError)
        return error_response(413, "Validation", str(exc), exc.indices)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInputError)
        return error_response(422, "Validation", str(exc), exc.indices)

    async def too_large(request: Request, exc: Exception) -> Response:
        return error_response(413, "Validation", str(exc))

    async def queue_full(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QueueFullError)
        metrics.rejected.labels(reason="queue_full").inc()
        response = error_response(429, "Overloaded", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    async def closed(request: Request, exc: Exception) -> Response:
        response = error_response(503, "Unhealthy", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    async def gone(request: Request, exc: Exception) -> Response:
        metrics.rejected.labels(reason="client_disconnected").inc()
        return Response(status_code=499)

    async def failed(request: Request, exc: Exception) -> Response:
        logger.error("scoring failed: %s: %s", type(exc).__name__, exc)
        return error_response(
            500, "Backend", f"{type(exc).__name__}: {exc}", getattr(exc, "indices", ())
        )

    app.add_exception_handler(RequestValidationError, unvalidated)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(InputTooLongError, too_long)
    app.add_exception_handler(InvalidInputError, invalid)
    app.add_exception_handler(RequestTooLargeError, too_large)
    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(BatcherClosedError, closed)
    app.add_exception_handler(ClientGone, gone)
    app.add_exception_handler(RerankError, failed)
