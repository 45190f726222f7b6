"""One batcher for every caller: the server's requests and an application's concurrent calls.

- :class:`MicroBatcher` (:mod:`~.batcher`): merges concurrent submissions into
  token-budget batches, pure asyncio, no HTTP, no model.
- :class:`Strategy` (:mod:`~.strategy`): how a scorer's pairs are prepared for it and a
  batch of them scored (one forward for a :class:`~rerank_plugins.scoring.PairScorer`).
- :class:`BatchingScorer` (:mod:`~.scorer`): any scorer behind the batcher, so concurrent
  ``score`` calls from threads and ``ascore`` calls from event loops share forwards
  (``load_scorer(..., batching=True)``, ``batching=True`` on the adapters).

``rerank-plugins serve`` (:mod:`rerank_plugins.serve`) drives the same two classes.
"""

from __future__ import annotations

from rerank_plugins.batching.batcher import (
    BatcherClosedError,
    BatchStats,
    MicroBatcher,
    QueueFullError,
    RequestTooLargeError,
)
from rerank_plugins.batching.scorer import BatchingScorer
from rerank_plugins.batching.strategy import (
    GroupedStrategy,
    PairStrategy,
    Prepared,
    Strategy,
    strategy_for,
)

__all__ = [
    "BatchStats",
    "BatcherClosedError",
    "BatchingScorer",
    "GroupedStrategy",
    "MicroBatcher",
    "PairStrategy",
    "Prepared",
    "QueueFullError",
    "RequestTooLargeError",
    "Strategy",
    "strategy_for",
]
