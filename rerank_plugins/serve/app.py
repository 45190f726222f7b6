"""The ASGI application: rerank APIs over one scorer, through the micro-batcher.

``create_app(scorer)`` takes any already-loaded scorer and returns a FastAPI app whose
lifespan starts the batcher (and warms the model up) inside the server's event loop, so
the same app runs under uvicorn (``rerank-plugins serve``) or another ASGI host.

Endpoints: ``POST /v1/rerank``, ``/v2/rerank`` (Cohere/Jina, :mod:`~.cohere`),
``POST /rerank`` (TEI, :mod:`~.tei`: a body with ``texts`` is answered as TEI, a bare
array; a body with ``documents`` as Cohere), ``POST /score`` and ``/v1/score`` (vLLM,
:mod:`~.vllm`), ``GET /health``, ``/metrics`` (Prometheus), ``/v1/models``
(:mod:`~.ops`), ``/openapi.json``, and with ``docs=True`` ``/docs`` and ``/redoc``.
Request bodies are read by :mod:`~.body`. Middleware in :mod:`~.middleware`, error answers in
:mod:`~.handlers`, the shared state and scoring path in :mod:`~.service`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from rerank_plugins.batching.batcher import DEFAULT_PREEMPT_AFTER, MicroBatcher
from rerank_plugins.batching.strategy import strategy_for
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.scoring import Score, Scorer
from rerank_plugins.serve import cohere, ops, tei, vllm
from rerank_plugins.serve.handlers import install_error_handlers
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.serve.middleware import AccessLog, BearerKey, BodyLimit
from rerank_plugins.serve.options import DEFAULT_BATCH_TOKENS
from rerank_plugins.serve.service import Service

__all__ = [
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CLIENT_BATCH_SIZE",
    "create_app",
    "warmup_documents",
]

logger = logging.getLogger(__name__)

DEFAULT_BODY_TIMEOUT = 60.0
"""Seconds a request's body may take to arrive (408 after)."""
DEFAULT_MAX_CLIENT_BATCH_SIZE = 1000
"""Documents per request (Cohere's documented maximum)."""
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
"""Request body limit (1,000 documents of about 8K tokens of text); the token cap
(``max_queued_tokens``) bounds a request first (docs/serving.md, "The largest request")."""


_WARM_WORDS = 150  # a pair of about 160 tokens: every CPU attention path runs on it


def warmup_documents(max_batch_tokens: int) -> list[str]:
    """Documents that fill about one batch of ``max_batch_tokens`` (1 to 64 of them).

    >>> len(warmup_documents(4096)), len(warmup_documents(10))
    (24, 1)
    """
    count = max(1, min(64, max_batch_tokens // (_WARM_WORDS + 16)))
    return [" ".join(["warm"] * _WARM_WORDS)] * count


def create_app(
    scorer: Scorer,
    *,
    model_name: str | None = None,
    max_batch_tokens: int | None = None,
    max_batch_requests: int | None = None,
    preempt_after: float | None = DEFAULT_PREEMPT_AFTER,
    max_client_batch_size: int = DEFAULT_MAX_CLIENT_BATCH_SIZE,
    max_queued_tokens: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    api_key: str | SecretStr | None = None,
    warmup: bool = True,
    registry: CollectorRegistry | None = None,
    docs: bool = False,
    freeze_gc: bool = False,
) -> FastAPI:
    """A FastAPI app serving ``scorer`` (already loaded; the app never loads models).

    ``max_batch_tokens``: token budget of one forward (default: the scorer's
    ``batch_tokens``, else :data:`DEFAULT_BATCH_TOKENS`); ``max_batch_requests``: requests
    merged into one batch at most (1: no batching across requests); ``preempt_after``:
    seconds a batch holding a large request runs before the small requests queued
    meanwhile run between two of its layers (``None``: never; see
    :class:`~rerank_plugins.batching.MicroBatcher`); ``max_queued_tokens``
    (default 32 batches' worth): tokens waiting before requests get 429;
    ``max_client_batch_size``: documents per request (over: 413); ``max_body_bytes``:
    request body limit (over: 413); ``body_timeout``: seconds a request's body may take
    to arrive (over: 408); ``api_key``: required as ``Authorization: Bearer``
    on every path but ``/health``; ``registry``: where the Prometheus metrics live (a
    fresh one by default); ``docs``: serve the Swagger UI at ``/docs`` and ReDoc at
    ``/redoc`` (off by default: their pages load scripts from a CDN, so they do not work
    offline; ``/openapi.json`` is always served); ``freeze_gc``: after the warm-up, move
    every object alive then (the model, torch's and the compilers' modules) out of the
    garbage collector's sight (``gc.freeze``), so that its full collections, which hold
    the GIL, scan only what requests create: for a process that only serves (the
    ``serve`` command sets it; a full collection took 87 ms here, 149 ms once the CPU
    fast path was compiled, against a p99 target of a few hundred).
    """
    if max_client_batch_size <= 0 or max_body_bytes <= 0 or body_timeout <= 0:
        raise InvalidInputError(
            "max_client_batch_size, max_body_bytes and body_timeout must be positive"
        )
    if max_batch_tokens is None:
        max_batch_tokens = int(getattr(scorer, "batch_tokens", None) or DEFAULT_BATCH_TOKENS)
    strategy = strategy_for(scorer)
    metrics = Metrics(registry)
    batcher: MicroBatcher[Any, Score] = MicroBatcher(
        strategy.run_batch,
        max_batch_tokens=max_batch_tokens,
        max_batch_requests=max_batch_requests,
        max_queued_tokens=max_queued_tokens or 32 * max_batch_tokens,
        padded=strategy.padded,
        preempt_after=preempt_after,
        on_batch=metrics.observe_batch,
        on_wait=metrics.observe_wait,
    )
    metrics.watch_queue(batcher)
    served = Service(
        name=model_name or str(getattr(scorer, "name", None) or type(scorer).__name__),
        window=getattr(scorer, "max_length", None),
        created=int(time.time()),
        strategy=strategy,
        batcher=batcher,
        metrics=metrics,
        max_client_batch_size=max_client_batch_size,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        if warmup:
            prepared = await asyncio.to_thread(
                strategy.prepare, "warm up", ["warm up the model"], truncate=True
            )
            await batcher.run_one(prepared.key, prepared.items)
            # Then one full batch: the first forward of that size compiles the CPU fast
            # path (seconds; models page) or reserves accelerator memory, here rather
            # than on a user's request.
            prepared = await asyncio.to_thread(
                strategy.prepare, "warm up", warmup_documents(max_batch_tokens), truncate=True
            )
            await batcher.run_one(prepared.key, prepared.items)
            await asyncio.to_thread(_finish_compiling)
            logger.info("model %s warmed up", served.name)
        if freeze_gc:
            gc.collect()
            gc.freeze()
            logger.info("%d objects frozen out of garbage collection", gc.get_freeze_count())
        yield
        await batcher.stop(drain=True)

    app = FastAPI(
        title="rerank-plugins",
        summary="Cohere/Jina, TEI and vLLM-compatible rerank API with cross-request batching",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.service = served
    app.state.batcher = batcher
    app.state.strategy = strategy
    app.state.engine = strategy  # the old name, kept for callers that read it
    app.state.metrics = metrics
    for dialect in (cohere, tei, vllm, ops):
        app.include_router(dialect.router)
    install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout=body_timeout)
    app.add_middleware(BearerKey, key=_secret(api_key))
    app.add_middleware(AccessLog, metrics=metrics)
    return app


def _secret(api_key: str | SecretStr | None) -> SecretStr | None:
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is None or not api_key.strip():
        return None
    return SecretStr(api_key.strip())


def _finish_compiling() -> None:
    """Compile the CPU fast path now rather than in the background once requests come
    (the engine module is loaded only by a local model)."""
    fused = sys.modules.get("rerank_plugins.local.engine.modernbert_fused")
    if fused is not None:
        fused.finish_compiling()
