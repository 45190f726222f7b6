"""The server's micro-batcher: :mod:`rerank_plugins.batching.batcher` (kept importable).

The batcher knows no HTTP; it moved below ``serve`` so that in-process callers
(``load_scorer(..., batching=True)``) share the same implementation.
"""

from __future__ import annotations

from rerank_plugins.batching.batcher import (
    BatcherClosedError,
    BatchStats,
    MicroBatcher,
    QueueFullError,
    RequestTooLargeError,
)

__all__ = [
    "BatchStats",
    "BatcherClosedError",
    "MicroBatcher",
    "QueueFullError",
    "RequestTooLargeError",
]
