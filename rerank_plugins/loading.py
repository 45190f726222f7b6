"""``load_scorer``: one entry point from a model spec or an endpoint URL to a scorer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_plugins.checkpoint import read_json, resolve_checkpoint
from rerank_plugins.errors import InvalidInputError, UnsupportedModelError
from rerank_plugins.scoring import Scorer

__all__ = ["detect_kind", "is_colbert_checkpoint", "load_scorer", "scorer_from"]

_HUB_OPTIONS = ("revision", "local_files_only")


def detect_kind(directory: Path) -> str:
    """Name the scorer family of a checkpoint from its own files (never from its name).

    Returns ``"colbert"`` for a PyLate late-interaction checkpoint (see
    :func:`is_colbert_checkpoint`), ``"matryoshka"`` for a 2D-Matryoshka reranker
    (``matryoshka_config.json`` and ``classification_heads.pt`` beside a bare encoder) or
    ``"cross-encoder"``; raises :class:`UnsupportedModelError` otherwise.
    """
    config = read_json(directory / "config.json")
    if is_colbert_checkpoint(directory):
        return "colbert"
    if (directory / "matryoshka_config.json").is_file() and (
        directory / "classification_heads.pt"
    ).is_file():
        return "matryoshka"
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    model_type = config.get("model_type", "unknown")
    if any(str(a).endswith("ForMaskedLM") for a in architectures):
        raise UnsupportedModelError(
            f"{directory} is a masked-language model ({architectures}), not a reranker; "
            "use rerank_plugins.fill_mask.FillMask to run it, or fine-tune it into a "
            "sequence-classification cross-encoder"
        )
    raise UnsupportedModelError(
        f"{directory} is a {model_type!r} checkpoint with architectures {architectures}; "
        "it is not a reranker this package can run (expected a sequence-classification "
        "cross-encoder)"
    )


def is_colbert_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a PyLate late-interaction (ColBERT) checkpoint.

    Read from its own files: a ``modules.json`` listing a ``pylate.`` module (PyLate's
    ``Dense`` in ``1_Dense/``), or a ``config_sentence_transformers.json`` whose
    ``similarity_fn_name`` is ``"MaxSim"``.
    """
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        modules = None
    if isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).startswith("pylate.") for m in modules
    ):
        return True
    try:
        st_config = json.loads(
            (directory / "config_sentence_transformers.json").read_text(encoding="utf-8")
        )
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(st_config, dict) and st_config.get("similarity_fn_name") == "MaxSim"


def load_scorer(spec: str | Path, **options: Any) -> Scorer:
    """Build a scorer from a hub id, a local checkpoint directory or an endpoint URL.

    ``http://`` and ``https://`` URLs give a :class:`~rerank_plugins.remote.RemoteScorer`;
    anything else is resolved to a checkpoint whose own files pick the local scorer.
    ``options`` go to the scorer's constructor (``device``, ``max_length``, ``overflow``,
    ``api_key``, ``dialect``, ...).
    """
    text = str(spec)
    if text.startswith(("http://", "https://")):
        from rerank_plugins.remote import RemoteScorer

        return RemoteScorer(text, **options)
    hub = {k: options[k] for k in _HUB_OPTIONS if k in options}
    directory = resolve_checkpoint(spec, **hub)
    kind = detect_kind(directory)
    if kind == "colbert":
        from rerank_plugins.colbert import ColBERTScorer

        return ColBERTScorer(directory, **options)
    if kind == "matryoshka":
        from rerank_plugins.matryoshka import MatryoshkaScorer

        return MatryoshkaScorer(directory, **options)
    if kind == "cross-encoder":
        from rerank_plugins.cross_encoder import CrossEncoderScorer

        return CrossEncoderScorer(directory, **options)
    raise AssertionError(f"unhandled scorer kind {kind!r}")  # detect_kind returns known kinds


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
        from rerank_plugins import DEFAULT_MODEL

        model = DEFAULT_MODEL
    return load_scorer(model, **(model_kwargs or {}))
