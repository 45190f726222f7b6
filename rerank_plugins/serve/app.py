"""The ASGI application: rerank APIs over one scorer, through the micro-batcher.

``create_app(scorer)`` takes any already-loaded scorer and returns a FastAPI app whose
lifespan starts the batcher (and warms the model up) inside the server's event loop, so
the same app runs under uvicorn (``rerank-plugins serve``) or another ASGI host.

Endpoints: ``POST /v1/rerank``, ``/v2/rerank`` (Cohere/Jina), ``POST /rerank`` (a TEI
body with ``texts`` is answered as TEI, a bare array; a body with ``documents`` as
Cohere), ``POST /score`` and ``/v1/score`` (vLLM), ``GET /health``, ``/metrics``
(Prometheus), ``/v1/models`` and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import SecretStr

from rerank_plugins.errors import InputTooLongError, InvalidInputError, RerankError
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import Score, Scorer, ascore_groups, check_inputs
from rerank_plugins.serve.batcher import (
    BatcherClosedError,
    MicroBatcher,
    QueueFullError,
    RequestTooLargeError,
)
from rerank_plugins.serve.engine import Engine, engine_for
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.serve.schemas import (
    ApiMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    ErrorBody,
    ModelCard,
    ModelList,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    TEIRank,
    TEIRerankRequest,
    TextDocument,
    Usage,
)
from rerank_plugins.wire import TOKENS_HEADER, TRUNCATED_HEADER

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CLIENT_BATCH_SIZE",
    "create_app",
]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("rerank_plugins.serve.access")

DEFAULT_MAX_CLIENT_BATCH_SIZE = 1000
"""Documents per request (Cohere's documented maximum)."""
DEFAULT_BATCH_TOKENS = 16384
"""Token budget of one batch for a scorer that has none of its own (remote endpoints)."""
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
"""Request body limit: 1,000 documents of about 8K tokens."""

_ROUTES = frozenset(
    {"/v1/rerank", "/v2/rerank", "/rerank", "/score", "/v1/score", "/health", "/metrics"}
    | {"/v1/models", "/openapi.json", "/docs"}
)
_OPEN_PATHS = frozenset({"/health"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


_T = TypeVar("_T")


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


_MAX_TOKENS_HEADER = 8192


@dataclass(frozen=True, slots=True)
class _Outcome:
    scores: list[Score]

    @property
    def tokens(self) -> int:
        return sum(s.tokens or 0 for s in self.scores)

    @property
    def truncated(self) -> list[int]:
        return [i for i, s in enumerate(self.scores) if s.truncated]


def create_app(
    scorer: Scorer,
    *,
    model_name: str | None = None,
    max_batch_tokens: int | None = None,
    max_batch_requests: int | None = None,
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
    max_queued_tokens: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | SecretStr | None = None,
    warmup: bool = True,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """A FastAPI app serving ``scorer`` (already loaded; the app never loads models).

    ``max_batch_tokens``: token budget of one forward (default: the scorer's
    ``batch_tokens``, else :data:`DEFAULT_BATCH_TOKENS`); ``max_batch_requests``: requests
    merged into one batch at most (1: no batching across requests); ``max_queued_tokens``
    (default 32 batches' worth): tokens waiting before requests get 429;
    ``max_client_batch_size``: documents per request (over: 413); ``max_body_bytes``:
    request body limit (over: 413); ``api_key``: required as ``Authorization: Bearer``
    on every path but ``/health``; ``registry``: where the Prometheus metrics live (a
    fresh one by default).
    """
    if max_client_batch_size <= 0 or max_body_bytes <= 0:
        raise InvalidInputError("max_client_batch_size and max_body_bytes must be positive")
    name = model_name or str(getattr(scorer, "name", None) or type(scorer).__name__)
    window = getattr(scorer, "max_length", None)
    key = _secret(api_key)
    engine = engine_for(scorer)
    metrics = Metrics(registry)
    if max_batch_tokens is None:
        max_batch_tokens = int(getattr(scorer, "batch_tokens", None) or DEFAULT_BATCH_TOKENS)
    batcher: MicroBatcher[Any, Score] = MicroBatcher(
        engine.run_batch,
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_queued_tokens=max_queued_tokens or 32 * max_batch_tokens,
        padded=engine.padded,
        on_batch=metrics.observe_batch,
    )
    metrics.watch_queue(batcher)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        if warmup:
            prepared = await asyncio.to_thread(
                engine.prepare, "warm up", ["warm up the model"], truncate=True
            )
            await batcher.run_one(prepared.key, prepared.items)
            logger.info("model %s warmed up", name)
        yield
        await batcher.stop(drain=True)

    app = FastAPI(
        title="rerank-plugins",
        summary="Cohere/Jina, TEI and vLLM-compatible rerank API with cross-request batching",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.engine = engine
    app.state.metrics = metrics

    async def score(
        request: Request,
        groups: Sequence[tuple[str, Sequence[str]]],
        *,
        truncate: bool,
        max_document_tokens: int | None = None,
        raw: bool = False,
    ) -> _Outcome:
        n = sum(len(documents) for _, documents in groups)
        request.state.documents = n
        if n > max_client_batch_size:
            raise RequestTooLargeError(
                f"batch size {n} > maximum allowed batch size {max_client_batch_size}"
            )
        submitter = _Submitter(
            engine,
            batcher,
            truncate=truncate,
            max_document_tokens=max_document_tokens,
            raw=raw,
        )
        scored = await _submit_until_disconnect(
            request, ascore_groups(submitter, groups, concurrent=True)
        )
        outcome = _Outcome([s for group in scored for s in group])
        request.state.tokens = outcome.tokens
        metrics.observe_request(n, outcome.tokens, len(outcome.truncated))
        return outcome

    def request_id(request: Request) -> str:
        return str(request.scope.get("rerank.request_id") or uuid.uuid4().hex)

    def truncation_headers(outcome: _Outcome) -> dict[str, str]:
        # Every dialect's answer carries them, so a RemoteScorer in any dialect gets the
        # same truncated flags and token counts as the local scorer (nothing silent).
        headers = {}
        if outcome.truncated:
            headers[TRUNCATED_HEADER] = ",".join(map(str, outcome.truncated))
        if outcome.scores and all(s.tokens is not None for s in outcome.scores):
            counts = ",".join(str(s.tokens) for s in outcome.scores)
            # Token counts are a nicety: left out rather than let a huge request's
            # headers pass clients' header size limits (h11: 16 KiB in all).
            if len(counts) <= _MAX_TOKENS_HEADER:
                headers[TOKENS_HEADER] = counts
        return headers

    async def cohere(request: Request, body: CohereRerankRequest) -> JSONResponse:
        texts = [d.text if isinstance(d, TextDocument) else d for d in body.documents]
        outcome = await score(
            request,
            [(body.query, texts)],
            truncate=body.truncate,
            max_document_tokens=body.max_tokens_per_doc,
        )
        results = [
            CohereResult(
                index=r.index,
                relevance_score=r.score.value,
                document=_document(body.documents[r.index]) if body.return_documents else None,
            )
            for r in rank(outcome.scores, top_n=body.top_n)
        ]
        cut = outcome.truncated
        warnings = (
            [f"documents {cut} were truncated to fit the model's window or max_tokens_per_doc"]
            if cut
            else []
        )
        answer = CohereRerankResponse(
            id=request_id(request),
            model=name,
            results=results,
            meta=ApiMeta(
                billed_units={"search_units": 1},
                tokens={"input_tokens": outcome.tokens},
                warnings=warnings,
                truncated_documents=cut,
            ),
            usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
        )
        return JSONResponse(
            answer.model_dump(exclude_none=True), headers=truncation_headers(outcome)
        )

    @app.post(
        "/v1/rerank",
        response_model=CohereRerankResponse,
        responses=_ERRORS,
        summary="Cohere v1 / Jina rerank",
    )
    async def rerank_v1(request: Request, body: CohereRerankRequest) -> JSONResponse:
        return await cohere(request, body)

    @app.post(
        "/v2/rerank",
        response_model=CohereRerankResponse,
        responses=_ERRORS,
        summary="Cohere v2 rerank",
    )
    async def rerank_v2(request: Request, body: CohereRerankRequest) -> JSONResponse:
        return await cohere(request, body)

    @app.post(
        "/rerank",
        response_model=list[TEIRank] | CohereRerankResponse,
        responses=_ERRORS,
        summary="TEI rerank (a body with texts) or Cohere rerank (a body with documents)",
    )
    async def rerank_tei(
        request: Request, body: TEIRerankRequest | CohereRerankRequest
    ) -> JSONResponse:
        if isinstance(body, CohereRerankRequest):
            return await cohere(request, body)
        outcome = await score(
            request,
            [(body.query, body.texts)],
            truncate=body.truncate,
            raw=body.raw_scores,
        )
        ranks = [
            TEIRank(
                index=r.index,
                score=r.score.value,
                text=body.texts[r.index] if body.return_text else None,
            ).model_dump(exclude_none=True)
            for r in rank(outcome.scores)
        ]
        return JSONResponse(ranks, headers=truncation_headers(outcome))

    async def vllm_score(request: Request, body: ScoreRequest) -> JSONResponse:
        first = [body.text_1] if isinstance(body.text_1, str) else body.text_1
        second = [body.text_2] if isinstance(body.text_2, str) else body.text_2
        if len(first) == 1:
            groups = [(first[0], second)]
        elif len(first) == len(second):
            groups = [(q, [d]) for q, d in zip(first, second, strict=True)]
        else:
            raise InvalidInputError(
                f"text_1 has {len(first)} texts and text_2 {len(second)}: give one text_1, "
                "or as many as text_2"
            )
        outcome = await score(
            request,
            groups,
            truncate=body.truncate_prompt_tokens is not None,
            raw=body.use_activation is False,
        )
        answer = ScoreResponse(
            id=f"score-{request_id(request)}",
            created=int(time.time()),
            model=name,
            data=[ScoreData(index=i, score=s.value) for i, s in enumerate(outcome.scores)],
            usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
            truncated_documents=outcome.truncated,
        )
        return JSONResponse(answer.model_dump(), headers=truncation_headers(outcome))

    @app.post("/score", response_model=ScoreResponse, responses=_ERRORS, summary="vLLM score")
    async def score_route(request: Request, body: ScoreRequest) -> JSONResponse:
        return await vllm_score(request, body)

    @app.post("/v1/score", response_model=ScoreResponse, responses=_ERRORS, summary="vLLM score")
    async def score_v1(request: Request, body: ScoreRequest) -> JSONResponse:
        return await vllm_score(request, body)

    @app.get("/health", summary="200 while serving (503 once shutting down)")
    async def health() -> dict[str, str]:
        if batcher.closing:
            raise BatcherClosedError("the server is shutting down")
        return {"status": "ok"}

    @app.get("/v1/models", response_model=ModelList, summary="the served model")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=name, created=created, max_model_len=window)])

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app, metrics)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(_BearerKey, key=key)
    app.add_middleware(_AccessLog, metrics=metrics)
    return app


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (401, "missing or wrong API key"),
        (413, "too many documents, body too large, or documents over the window"),
        (422, "invalid request"),
        (429, "queue full: retry after Retry-After seconds"),
        (503, "shutting down"),
    )
}


def _secret(api_key: str | SecretStr | None) -> SecretStr | None:
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is None or not api_key.strip():
        return None
    return SecretStr(api_key.strip())


def _document(doc: str | TextDocument) -> dict[str, Any]:
    return doc.model_dump() if isinstance(doc, TextDocument) else {"text": doc}


class _Submitter:
    """One request's way to the batcher, as the async scorer :func:`ascore_groups` calls."""

    def __init__(
        self,
        engine: Engine,
        batcher: MicroBatcher[Any, Score],
        *,
        truncate: bool,
        max_document_tokens: int | None,
        raw: bool,
    ) -> None:
        self.engine = engine
        self.batcher = batcher
        self.truncate = truncate
        self.max_document_tokens = max_document_tokens
        self.raw = raw

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        if not documents:
            check_inputs(query, documents)
            return []
        prepared = await asyncio.to_thread(
            self.engine.prepare,
            query,
            documents,
            truncate=self.truncate,
            max_document_tokens=self.max_document_tokens,
            raw=self.raw,
        )
        scores = await self.batcher.submit(prepared.items, prepared.lengths, key=prepared.key)
        self.engine.check(scores, truncate=self.truncate)
        return scores


async def _submit_until_disconnect(request: Request, work: Awaitable[_T]) -> _T:
    """Await ``work`` unless the client disconnects first (then cancel it)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise _ClientGone


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    # The body has been read: the next message is the disconnect (or the end of the
    # response, which cannot come before the answer).
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


def _error(status: int, kind: str, message: str, indices: Sequence[int] = ()) -> JSONResponse:
    body = ErrorBody(error=message, error_type=kind, message=message, indices=list(indices))
    return JSONResponse(body.model_dump(), status_code=status)


def _install_error_handlers(app: FastAPI, metrics: Any) -> None:
    async def too_long(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputTooLongError)
        return _error(413, "Validation", str(exc), exc.indices)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidInputError)
        return _error(422, "Validation", str(exc), exc.indices)

    async def too_large(request: Request, exc: Exception) -> Response:
        return _error(413, "Validation", str(exc))

    async def queue_full(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QueueFullError)
        metrics.rejected.labels(reason="queue_full").inc()
        response = _error(429, "Overloaded", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    async def closed(request: Request, exc: Exception) -> Response:
        response = _error(503, "Unhealthy", str(exc))
        response.headers["Retry-After"] = "1"
        return response

    async def gone(request: Request, exc: Exception) -> Response:
        metrics.rejected.labels(reason="client_disconnected").inc()
        return Response(status_code=499)

    async def failed(request: Request, exc: Exception) -> Response:
        logger.error("scoring failed: %s: %s", type(exc).__name__, exc)
        return _error(500, "Backend", f"{type(exc).__name__}: {exc}", getattr(exc, "indices", ()))

    app.add_exception_handler(InputTooLongError, too_long)
    app.add_exception_handler(InvalidInputError, invalid)
    app.add_exception_handler(RequestTooLargeError, too_large)
    app.add_exception_handler(QueueFullError, queue_full)
    app.add_exception_handler(BatcherClosedError, closed)
    app.add_exception_handler(_ClientGone, gone)
    app.add_exception_handler(RerankError, failed)


# -- ASGI middleware (pure ASGI: a disconnecting client stays visible to the handlers) ---


class _AccessLog:
    """One structured log line per request (no bodies, no headers) and request metrics."""

    def __init__(self, app: ASGIApp, *, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope["rerank.request_id"] = rid
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - start
            path = scope["path"] if scope["path"] in _ROUTES else "other"
            state = scope.get("state") or {}
            if path not in ("/metrics", "/health"):
                self.metrics.observe_http(scope["method"], path, status, seconds)
            access_logger.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "documents": state.get("documents"),
                        "tokens": state.get("tokens"),
                        "latency_ms": round(seconds * 1e3, 2),
                        "request_id": rid,
                    }
                )
            )


class _BearerKey:
    """``Authorization: Bearer KEY`` on every path but ``/health`` (constant-time compare)."""

    def __init__(self, app: ASGIApp, *, key: SecretStr | None) -> None:
        self.app = app
        self.key = key.get_secret_value().encode() if key is not None else None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = (_header(scope, b"authorization") or "").encode("latin-1")
        scheme, _, token = given.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        if not ok:
            response = _error(
                401, "Unauthorized", "missing or wrong API key (Authorization: Bearer)"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _BodyLimit:
    """Reads the body up to ``max_bytes`` (413 beyond), then replays it to the app."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        too_big = _error(413, "Validation", f"request body over {self.max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
