"""Prometheus metrics of one server (its own registry, so several apps can coexist)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rerank_plugins.batching.batcher import BatchStats, MicroBatcher

__all__ = ["METHODS", "Metrics"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""HTTP methods named in metrics as they are (any other method is ``"other"``)."""
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class Metrics:
    """Requests, documents, tokens, batch sizes, queue depth, latency and stage histograms
    (queue wait vs compute: ``rerank_stage_seconds{stage="queue"|"forward"|"prepare"}``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rerank_http_requests", "HTTP requests", ["method", "path", "status"], registry=r
        )
        self.latency = Histogram(
            "rerank_http_request_seconds",
            "HTTP request latency",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "rerank_http_requests_in_flight", "HTTP requests being handled", registry=r
        )
        self.documents = Counter("rerank_documents", "documents scored", registry=r)
        self.tokens = Counter(
            "rerank_tokens", "tokens scored (pairs, specials included)", registry=r
        )
        self.truncated = Counter("rerank_truncated_documents", "documents truncated", registry=r)
        self.rejected = Counter(
            "rerank_rejected_requests", "requests refused or abandoned", ["reason"], registry=r
        )
        self.batch_items = Histogram(
            "rerank_batch_pairs", "pairs per forward batch", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "rerank_batch_tokens", "tokens per forward batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "rerank_batch_requests",
            "requests merged into one batch",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "rerank_batch_seconds", "forward time per batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.stage_seconds = Histogram(
            "rerank_stage_seconds",
            "where a request's time goes: prepare (input check and tokenisation, per query "
            "group, off the event loop), queue (waiting for its first batch), forward (per "
            "batch)",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.queue_tokens = Gauge("rerank_queue_tokens", "tokens waiting for a batch", registry=r)
        self.queue_requests = Gauge(
            "rerank_queue_requests", "requests waiting for a batch", registry=r
        )

    def watch_queue(self, batcher: MicroBatcher[Any, Any]) -> None:
        self.queue_tokens.set_function(lambda: batcher.queued_tokens)
        self.queue_requests.set_function(lambda: batcher.queued_requests)

    def observe_batch(self, stats: BatchStats) -> None:
        self.batch_items.observe(stats.items)
        self.batch_tokens.observe(stats.tokens)
        self.batch_requests.observe(stats.requests)
        self.batch_seconds.observe(stats.seconds)
        self.stage_seconds.labels(stage="forward").observe(stats.seconds)

    def observe_wait(self, seconds: float) -> None:
        self.stage_seconds.labels(stage="queue").observe(seconds)

    def observe_prepare(self, seconds: float) -> None:
        self.stage_seconds.labels(stage="prepare").observe(seconds)

    def observe_request(self, documents: int, tokens: int, truncated: int) -> None:
        self.documents.inc(documents)
        self.tokens.inc(tokens)
        self.truncated.inc(truncated)

    def observe_http(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count a request; ``path`` must already be a route or ``"other"``."""
        method = method if method in METHODS else "other"
        self.requests.labels(method=method, path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)
