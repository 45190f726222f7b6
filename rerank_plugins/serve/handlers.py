"""Errors to HTTP answers: one JSON error body (:class:`ErrorBody`) for every failure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from rerank_plugins.errors import InputTooLongError, InvalidInputError, RerankError
from rerank_plugins.serve.batcher import BatcherClosedError, QueueFullError, RequestTooLargeError
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.serve.schemas import ErrorBody

__all__ = ["ERROR_RESPONSES", "ClientGone", "error_response", "install_error_handlers"]

logger = logging.getLogger("rerank_plugins.serve.app")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "missing or wrong API key"),
        (413, "too many documents, body too large, or documents over the window"),
        (422, "invalid request"),
        (429, "queue full: retry after Retry-After seconds"),
        (503, "shutting down"),
    )
}
"""The error answers every scoring endpoint documents (OpenAPI ``responses``)."""


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(
    status: int, kind: str, message: str, indices: Sequence[int] = ()
) -> JSONResponse:
    """The JSON error body, with ``indices`` naming the documents at fault."""
    body = ErrorBody(error=message, error_type=kind, message=message, indices=list(indices))
    return JSONResponse(body.model_dump(), status_code=status)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map the package's errors to status codes (413, 422, 429, 503, 499, 500)."""

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

    app.add_exception_handler(InputTooLongError, too_long)
    app.add_exception_handler(InvalidInputError, invalid)
    app.add_exception_handler(RequestTooLargeError, too_large)
    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(BatcherClosedError, closed)
    app.add_exception_handler(ClientGone, gone)
    app.add_exception_handler(RerankError, failed)
