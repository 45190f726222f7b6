"""Long-context reranking for LangChain, LlamaIndex and plain Python.

``import rerank_plugins`` stays light: torch, transformers, httpx and the frameworks are
imported only by the scorer or adapter that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rerank_plugins.cascade import Cascade
from rerank_plugins.convenience import rerank
from rerank_plugins.errors import (
    EndpointError,
    InputTooLongError,
    InvalidInputError,
    InvalidScoreError,
    MissingExtraError,
    ModelLoadError,
    RerankError,
    ScoringError,
    UnknownOptionError,
    UnsupportedModelError,
)
from rerank_plugins.loading import DEFAULT_MODEL, load_scorer
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import OverflowPolicy, Score, ScoreKind, Scorer

if TYPE_CHECKING:
    from rerank_plugins.local.colbert import ColBERTScorer
    from rerank_plugins.local.cross_encoder import CrossEncoderScorer
    from rerank_plugins.local.decoder import DecoderScorer
    from rerank_plugins.local.fill_mask import FillMask
    from rerank_plugins.local.matryoshka import MatryoshkaScorer
    from rerank_plugins.remote import RemoteScorer

__all__ = [
    "DEFAULT_MODEL",
    "Cascade",
    "ColBERTScorer",
    "CrossEncoderScorer",
    "DecoderScorer",
    "EndpointError",
    "FillMask",
    "InputTooLongError",
    "InvalidInputError",
    "InvalidScoreError",
    "MatryoshkaScorer",
    "MissingExtraError",
    "ModelLoadError",
    "OverflowPolicy",
    "Ranked",
    "RemoteScorer",
    "RerankError",
    "Score",
    "ScoreKind",
    "Scorer",
    "ScoringError",
    "UnknownOptionError",
    "UnsupportedModelError",
    "load_scorer",
    "rank",
    "rerank",
]

__version__ = "0.1.0"


# Backends import torch or httpx: each is loaded on first use, not by ``import rerank_plugins``.
_LAZY = {
    "RemoteScorer": "rerank_plugins.remote",
    "CrossEncoderScorer": "rerank_plugins.local.cross_encoder",
    "DecoderScorer": "rerank_plugins.local.decoder",
    "ColBERTScorer": "rerank_plugins.local.colbert",
    "MatryoshkaScorer": "rerank_plugins.local.matryoshka",
    "FillMask": "rerank_plugins.local.fill_mask",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
