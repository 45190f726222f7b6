"""Long-context reranking for LangChain, LlamaIndex and plain Python.

``import rerank_plugins`` stays light: torch, transformers, httpx and the frameworks are
imported only by the scorer or adapter that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank_plugins.errors import (
    EndpointError,
    InputTooLongError,
    InvalidInputError,
    InvalidScoreError,
    MissingExtraError,
    RerankError,
    ScoringError,
    UnsupportedModelError,
)
from rerank_plugins.loading import load_scorer
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import OverflowPolicy, Score, ScoreKind, Scorer

if TYPE_CHECKING:
    from rerank_plugins.remote import RemoteScorer

__all__ = [
    "DEFAULT_MODEL",
    "EndpointError",
    "InputTooLongError",
    "InvalidInputError",
    "InvalidScoreError",
    "MissingExtraError",
    "OverflowPolicy",
    "Ranked",
    "RemoteScorer",
    "RerankError",
    "Score",
    "ScoreKind",
    "Scorer",
    "ScoringError",
    "UnsupportedModelError",
    "load_scorer",
    "rank",
]

DEFAULT_MODEL = "Alibaba-NLP/gte-reranker-modernbert-base"
"""The model the command line and the adapters use when none is given."""

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RemoteScorer imports httpx: loaded on first use, not by ``import rerank_plugins``.
    if name == "RemoteScorer":
        from rerank_plugins.remote import RemoteScorer

        return RemoteScorer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
