"""Random-weight 2D-Matryoshka rerankers (mmbert-rerank-32k-2d-matryoshka layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.testing.words import (
    _write_word_tokenizer,
)

TINY_MATRYOSHKA: dict[str, Any] = {
    "vocab_size": 305,  # 5 specials + the 300 words
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "global_attn_every_n_layers": 3,
    "local_attention": 8,
    "max_position_embeddings": 32768,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 160000.0,
    "initializer_range": 0.2,
}

# The published config.json is a transformers 4.x ModernBertModel config (no rope_scaling).
_MMBERT_CONFIG: dict[str, Any] = {
    "architectures": ["ModernBertModel"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 2,
    "classifier_activation": "gelu",
    "classifier_bias": False,
    "classifier_dropout": 0.0,
    "classifier_pooling": "mean",
    "cls_token_id": 1,
    "decoder_bias": True,
    "deterministic_flash_attn": False,
    "embedding_dropout": 0.0,
    "eos_token_id": 1,
    "hidden_activation": "gelu",
    "initializer_cutoff_factor": 2.0,
    "layer_norm_eps": 1e-05,
    "mask_token_id": 4,
    "mlp_bias": False,
    "mlp_dropout": 0.0,
    "model_type": "modernbert",
    "norm_bias": False,
    "norm_eps": 1e-05,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "sep_token_id": 1,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}

# Gemma-2 ids of mmBERT's specials: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4.
_MMBERT_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]


def save_mmbert_word_tokenizer(directory: Path, *, model_max_length: int) -> None:
    """Write a word-level tokenizer with mmBERT's special ids (Gemma-2 numbering).

    ids: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, then ``WORDS``. Pairs are
    ``<bos> A <eos> B <eos>``; the scorer pools whatever token comes first.
    """
    _write_word_tokenizer(
        directory,
        specials=_MMBERT_SPECIALS,
        first="<bos>",
        sep="<eos>",
        token_config={
            "pad_token": "<pad>",
            "eos_token": "<eos>",
            "bos_token": "<bos>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
            "cls_token": "<bos>",
            "sep_token": "<eos>",
        },
        model_max_length=model_max_length,
    )


def _scaled_exits(num_layers: int, hidden: int) -> tuple[list[int], list[int]]:
    """The published exit grid scaled to a smaller trunk: 22 layers x 768 give it exactly."""
    layers = sorted({max(1, (num_layers * k + 11) // 22) for k in (3, 6, 11, 22)})
    dims = sorted({max(2, hidden * k // 12) for k in (12, 8, 4, 2, 1)}, reverse=True)
    return layers, dims


def make_matryoshka_checkpoint(
    directory: str | Path,
    *,
    config: dict[str, Any] | None = None,
    matryoshka: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a random-weight 2D-Matryoshka reranker in the published artifact layout.

    ``config.json`` (a transformers 4.x ``ModernBertModel`` config: ``TINY_MATRYOSHKA`` +
    ``config``, mmBERT's special ids, RoPE theta 160000 on both layer types, 32768
    positions, no ``rope_scaling``), ``model.safetensors`` with bare encoder keys (no
    ``model.`` prefix; LayerNorm weights randomised too, so ``final_norm`` is not the
    identity), ``matryoshka_config.json`` (``layer_indices`` and ``dim_indices`` scaled from
    [3, 6, 11, 22] x [768, 512, 256, 128, 64] unless ``matryoshka`` overrides them, pooling
    "cls", ``has_final_norm``), ``classification_heads.pt`` (``torch.save`` of a plain dict of
    tensors: ``"{layer}.{dim}.0.weight"`` ``[d // 2, d]``, ``.0.bias``, ``"{layer}.{dim}.3.weight"``
    ``[1, d // 2]``, ``.3.bias``) and an mmBERT-style word tokenizer.
    """
    torch = require("torch")
    transformers = require("transformers")
    safetensors_torch = require("safetensors.torch")
    directory = Path(directory)
    settings = {**_MMBERT_CONFIG, **TINY_MATRYOSHKA, **(config or {})}
    hidden = int(settings["hidden_size"])
    n_layers = int(settings["num_hidden_layers"])
    layers, dims = _scaled_exits(n_layers, hidden)
    exits: dict[str, Any] = {
        "layer_indices": layers,
        "dim_indices": dims,
        "hidden_size": hidden,
        "num_layers": n_layers,
        "pooling_strategy": "cls",
        "has_final_norm": True,
        **(matryoshka or {}),
    }
    keep = {k: v for k, v in settings.items() if k not in ("architectures", "model_type")}
    cfg = transformers.ModernBertConfig(**keep)
    torch.manual_seed(seed)
    model = transformers.ModernBertModel(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    state = {}
    for key, value in model.state_dict().items():
        if "norm" in key:  # LayerNorm weights 1 +- 0.1, so that normalising is visible
            value = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        state[key] = value.detach().contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(
        state, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )
    (directory / "config.json").write_text(json.dumps(dict(sorted(settings.items())), indent=2))
    (directory / "matryoshka_config.json").write_text(json.dumps(exits, indent=2))
    heads: dict[str, Any] = {}
    for layer in exits["layer_indices"]:
        for dim in exits["dim_indices"]:
            half = dim // 2
            heads[f"{layer}.{dim}.0.weight"] = torch.randn(half, dim, generator=gen) / dim**0.5
            heads[f"{layer}.{dim}.0.bias"] = 0.1 * torch.randn(half, generator=gen)
            heads[f"{layer}.{dim}.3.weight"] = torch.randn(1, half, generator=gen) / half**0.5
            heads[f"{layer}.{dim}.3.bias"] = 0.1 * torch.randn(1, generator=gen)
    torch.save(heads, str(directory / "classification_heads.pt"))
    save_mmbert_word_tokenizer(directory, model_max_length=int(settings["max_position_embeddings"]))
    return directory


# --- late interaction: PyLate's GTE-ModernColBERT layout ------------------------------
