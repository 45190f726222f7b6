"""Which local scorer family a checkpoint belongs to, read from its own files.

The bottom of the local layer: it reads JSON files only (no torch), so ``load_scorer``
and each scorer can ask it without importing one another.
"""

from __future__ import annotations

import json
from pathlib import Path

from rerank_plugins.errors import UnsupportedModelError
from rerank_plugins.local.checkpoint import read_json

__all__ = ["detect_kind", "is_colbert_checkpoint"]


def detect_kind(directory: Path) -> str:
    """Name the scorer family of a checkpoint from its own files (never from its name).

    Returns ``"colbert"`` for a PyLate late-interaction checkpoint (see
    :func:`is_colbert_checkpoint`), ``"matryoshka"`` for a 2D-Matryoshka reranker
    (``matryoshka_config.json`` and ``classification_heads.pt`` beside a bare encoder) or
    ``"cross-encoder"``, ``"decoder"`` for a causal LM read as a yes/no reranker
    (``...ForCausalLM``: Qwen3-Reranker, mxbai-rerank-v2); raises
    :class:`UnsupportedModelError` otherwise.
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
    if any(str(a).endswith("ForCausalLM") for a in architectures):
        return "decoder"
    model_type = config.get("model_type", "unknown")
    if any(str(a).endswith("ForMaskedLM") for a in architectures):
        raise UnsupportedModelError(
            f"{directory} is a masked-language model ({architectures}), not a reranker; "
            "use rerank_plugins.local.fill_mask.FillMask to run it, or fine-tune it into a "
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
