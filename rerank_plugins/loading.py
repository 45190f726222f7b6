"""``load_scorer``: one entry point from a model spec or an endpoint URL to a scorer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.scoring import Scorer

__all__ = ["DEFAULT_MODEL", "load_scorer", "scorer_from"]

DEFAULT_MODEL = "Alibaba-NLP/gte-reranker-modernbert-base"
"""The model the command line and the adapters use when none is given."""


def load_scorer(spec: str | Path, *, batching: bool = False, **options: Any) -> Scorer:
    """Build a scorer from a hub id, a local checkpoint directory or an endpoint URL.

    ``http://`` and ``https://`` URLs give a :class:`~rerank_plugins.remote.RemoteScorer`;
    anything else is resolved to a checkpoint whose own files pick the local scorer.
    ``options`` go to the scorer's constructor (``device``, ``max_length``, ``overflow``,
    ``api_key``, ``dialect``, ...; ``threads`` sets a local model's intra-op threads).
    ``batching=True`` wraps the scorer in a :class:`~rerank_plugins.batching.BatchingScorer`:
    concurrent calls (threads, event loops) share forwards through the server's batcher.
    """
    scorer = _load(spec, options)
    if batching:
        from rerank_plugins.batching import BatchingScorer

        return BatchingScorer(scorer)
    return scorer


def _load(spec: str | Path, options: dict[str, Any]) -> Scorer:
    text = str(spec)
    if text.startswith(("http://", "https://")):
        from rerank_plugins.remote import RemoteScorer

        return RemoteScorer(text, **options)
    from rerank_plugins.local import load_local_scorer

    return load_local_scorer(spec, **options)


def scorer_from(
    scorer: Scorer | None, model: str | Path | None, model_kwargs: dict[str, Any] | None
) -> Scorer:
    """The scorer an adapter should use: the one given, else ``load_scorer(model)``.

    With neither, the default model (:data:`rerank_plugins.DEFAULT_MODEL`) is loaded.
    """
    if scorer is not None:
        if model is not None or model_kwargs:
            raise InvalidInputError("pass either scorer= or model= (with model_kwargs), not both")
        if not isinstance(scorer, Scorer):
            raise InvalidInputError(
                f"scorer must implement score() and ascore(), got {type(scorer).__name__}"
            )
        return scorer
    if model is None:
        model = DEFAULT_MODEL
    return load_scorer(model, **(model_kwargs or {}))
