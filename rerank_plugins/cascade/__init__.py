"""Cascades: a cheap scorer for every candidate, a better one for the best
(:class:`~rerank_plugins.cascade.scorer.Cascade`). Knows no backend: any two scorers."""

from __future__ import annotations

from rerank_plugins.cascade.scorer import Cascade

__all__ = ["Cascade"]
