"""Old name of :mod:`rerank_plugins.serve.strategy` (kept importable).

"engine" names the transformer package (``rerank_plugins.local.engine``); the serve
strategies are ``Strategy``, ``PairStrategy`` and ``GroupedStrategy`` now.
"""

from __future__ import annotations

from rerank_plugins.serve.strategy import GroupedStrategy, PairStrategy, Prepared, Strategy
from rerank_plugins.serve.strategy import strategy_for as engine_for

__all__ = ["Engine", "GroupedEngine", "PairEngine", "Prepared", "engine_for"]

Engine = Strategy
PairEngine = PairStrategy
GroupedEngine = GroupedStrategy
