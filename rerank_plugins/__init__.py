"""Long-context reranking for LangChain, LlamaIndex and plain Python.

``import rerank_plugins`` stays light: torch, transformers, httpx and the frameworks are
imported only by the scorer or adapter that needs them.
"""

from __future__ import annotations

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

__all__ = [
    "DEFAULT_MODEL",
    "EndpointError",
    "InputTooLongError",
    "InvalidInputError",
    "InvalidScoreError",
    "MissingExtraError",
    "OverflowPolicy",
    "Ranked",
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
