"""The serve strategies: :mod:`rerank_plugins.batching.strategy` (kept importable)."""

from __future__ import annotations

from rerank_plugins.batching.strategy import (
    GroupedStrategy,
    PairStrategy,
    Prepared,
    Strategy,
    strategy_for,
)

__all__ = ["GroupedStrategy", "PairStrategy", "Prepared", "Strategy", "strategy_for"]
