"""Test doubles that ship with the library: tiny random checkpoints in the real layout.

Nothing here downloads anything. ``make_modernbert_checkpoint`` writes ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json`` exactly as a hub
checkpoint has them, so the code under test takes the real loading path. Needs the
``torch`` extra.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Literal

from rerank_plugins._imports import require

__all__ = [
    "TINY_MODERNBERT",
    "WORDS",
    "make_modernbert_checkpoint",
    "random_text",
    "save_word_tokenizer",
]

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

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(300)]
"""The tokenizer's words; any text made of them (space-separated) has no unknown token."""

Head = Literal["seq-cls", "mlm", "bare"]


def random_text(rng: random.Random, n_words: int) -> str:
    """``n_words`` random vocabulary words; each is exactly one token."""
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def save_word_tokenizer(directory: Path, *, model_max_length: int) -> None:
    """Write a word-level tokenizer with ModernBERT's special tokens and pair template.

    ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then the words. Pairs are
    ``[CLS] A [SEP] B [SEP]``.
    """
    tokenizers = require("tokenizers")
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + WORDS)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tok.add_special_tokens(_SPECIALS)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


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
