"""Word-level tokenizers over a fixed vocabulary, and random text made of its words."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(300)]
"""The tokenizer's words; any text made of them (space-separated) has no unknown token."""


def random_text(rng: random.Random, n_words: int) -> str:
    """``n_words`` random vocabulary words; each is exactly one token."""
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def _write_word_tokenizer(
    directory: Path,
    *,
    specials: list[str],
    first: str,
    sep: str,
    token_config: dict[str, str],
    model_max_length: int,
) -> None:
    """A word-level tokenizer over ``specials + WORDS`` (ids in that order) whose pairs are
    ``first A sep B sep``, with its ``tokenizer_config.json``."""
    tokenizers = require("tokenizers")
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    unk = token_config["unk_token"]
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{first} $A {sep}",
        pair=f"{first} $A {sep} $B {sep}",
        special_tokens=[(first, vocab[first]), (sep, vocab[sep])],
    )
    tok.add_special_tokens(specials)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    _write_tokenizer_config(directory, "PreTrainedTokenizerFast", model_max_length, token_config)


def _write_tokenizer_config(
    directory: Path, cls: str, model_max_length: int, token_config: dict[str, str]
) -> None:
    config: dict[str, Any] = {
        "tokenizer_class": cls,
        "model_max_length": model_max_length,
        **token_config,
        "clean_up_tokenization_spaces": cls != "PreTrainedTokenizerFast",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def save_word_tokenizer(directory: Path, *, model_max_length: int) -> None:
    """Write a word-level tokenizer with ModernBERT's special tokens and pair template.

    ids: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, then the words. Pairs are
    ``[CLS] A [SEP] B [SEP]``.
    """
    _write_word_tokenizer(
        directory,
        specials=_SPECIALS,
        first="[CLS]",
        sep="[SEP]",
        token_config={
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "mask_token": "[MASK]",
        },
        model_max_length=model_max_length,
    )
