"""Random-weight ModernBERT checkpoints (seq-cls, masked LM, bare encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from rerank_plugins._imports import require
from rerank_plugins.testing.words import (
    save_word_tokenizer,
)

# 4 layers (global at 0 and 2, local at 1 and 3), a ±4-token local window, 8K positions.
TINY_MODERNBERT: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "global_attn_every_n_layers": 2,
    "local_attention": 8,
    "max_position_embeddings": 8192,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "initializer_range": 0.2,
    "classifier_pooling": "mean",
}

Head = Literal["seq-cls", "mlm", "bare"]


def make_modernbert_checkpoint(
    directory: str | Path,
    *,
    head: Head = "seq-cls",
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-weight ModernBERT checkpoint (``TINY_MODERNBERT`` + ``config``).

    ``head`` picks the layout: ``"seq-cls"`` (ModernBertForSequenceClassification, one
    label), ``"mlm"`` (ModernBertForMaskedLM, tied decoder) or ``"bare"`` (ModernBertModel,
    keys without the ``model.`` prefix). Weights are drawn with ``initializer_range`` from
    the config (0.2 by default, so that documents get clearly different scores).
    """
    torch = require("torch")
    transformers = require("transformers")
    directory = Path(directory)
    settings = {**TINY_MODERNBERT, **(config or {})}
    settings.setdefault("pad_token_id", 0)
    settings.setdefault("cls_token_id", 2)
    settings.setdefault("sep_token_id", 3)
    settings.setdefault("bos_token_id", 2)
    settings.setdefault("eos_token_id", 3)
    cfg = transformers.ModernBertConfig(num_labels=1, **settings)
    classes = {
        "seq-cls": transformers.ModernBertForSequenceClassification,
        "mlm": transformers.ModernBertForMaskedLM,
        "bare": transformers.ModernBertModel,
    }
    torch.manual_seed(seed)
    model = classes[head](cfg)
    model.save_pretrained(str(directory), safe_serialization=True)
    save_word_tokenizer(directory, model_max_length=int(settings["max_position_embeddings"]))
    return directory
