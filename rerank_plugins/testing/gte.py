"""Random-weight GTE "new" checkpoints (gte-multilingual-reranker-base layout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.testing.words import (
    WORDS,
    _write_tokenizer_config,
)

# GTE "new" (gte-multilingual-reranker-base) at toy size: 3 post-norm layers, NTK RoPE on.
TINY_GTE_NEW: dict[str, Any] = {
    "vocab_size": 305,  # 4 specials, the 300 words, <mask>
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": 8192,
    "type_vocab_size": 1,
    "rope_theta": 20000,
    "rope_scaling": {"factor": 8.0, "type": "ntk"},
    "initializer_range": 0.2,
}

_XLMR_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]

# The layout of the published config.json; auto_map points at remote code we never run.
_GTE_NEW_CONFIG: dict[str, Any] = {
    "architectures": ["NewForSequenceClassification"],
    "attention_probs_dropout_prob": 0.0,
    # The real config points at remote code; we never run it (no trust_remote_code).
    "auto_map": {
        "AutoConfig": "Alibaba-NLP/new-impl--configuration.NewConfig",
        **{
            f"AutoModel{task}": f"Alibaba-NLP/new-impl--modeling.New{task or 'Model'}"
            for task in (
                "",
                "ForMaskedLM",
                "ForMultipleChoice",
                "ForQuestionAnswering",
                "ForSequenceClassification",
                "ForTokenClassification",
            )
        },
    },
    "classifier_dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "layer_norm_eps": 1e-12,
    "layer_norm_type": "layer_norm",
    "logn_attention_clip1": False,
    "logn_attention_scale": False,
    "model_type": "new",
    "pack_qkv": True,
    "pad_token_id": 1,
    "position_embedding_type": "rope",
    "torch_dtype": "float32",
    "unpad_inputs": False,
    "use_memory_efficient_attention": False,
}


def save_xlmr_tokenizer(directory: Path, *, model_max_length: int) -> None:
    """Write an XLM-R style Unigram tokenizer whose pieces are ``"▁" + word`` for ``WORDS``.

    ids: <s>=0 <pad>=1 </s>=2 <unk>=3, the words from 4, <mask> last. Pairs are
    ``<s> A </s></s> B </s>``, every type id 0 (as XLM-R).
    """
    tokenizers = require("tokenizers")
    pieces = [(tok, 0.0) for tok in _XLMR_SPECIALS]
    pieces += [("\u2581" + word, -5.0) for word in WORDS]
    pieces.append(("<mask>", 0.0))
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = tokenizers.normalizers.Replace(tokenizers.Regex(" {2,}"), " ")
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="always", split=True
    )
    tok.decoder = tokenizers.decoders.Metaspace(
        replacement="\u2581", prepend_scheme="always", split=True
    )
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens([*_XLMR_SPECIALS, "<mask>"])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    tokens = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": "<mask>",
    }
    _write_tokenizer_config(directory, "XLMRobertaTokenizer", model_max_length, tokens)


def make_gte_new_checkpoint(
    directory: str | Path, *, config: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    """Write a random-weight ``NewForSequenceClassification`` checkpoint (GTE "new").

    ``config.json`` has the published layout (``model_type`` "new", ``auto_map`` to the
    remote code, NTK ``rope_scaling``) with ``TINY_GTE_NEW`` + ``config`` as sizes;
    ``model.safetensors`` names tensors as the published checkpoint does (``new.`` prefix,
    packed ``qkv_proj`` unless ``pack_qkv`` is false, ``up_gate_proj`` = [up | gate] without
    bias, ``classifier`` outside the prefix). Weights are normal with ``initializer_range``
    (0.2, so documents score clearly apart), biases and LayerNorms randomised as well.
    """
    torch = require("torch")
    safetensors_torch = require("safetensors.torch")
    directory = Path(directory)
    settings = {**_GTE_NEW_CONFIG, **TINY_GTE_NEW, **(config or {})}
    hidden = int(settings["hidden_size"])
    inter = int(settings["intermediate_size"])
    std = float(settings["initializer_range"])
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = std) -> Any:
        return torch.randn(*shape, generator=gen) * scale

    def norm(prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}.weight": 1.0 + normal(hidden, scale=0.1),
            f"{prefix}.bias": normal(hidden, scale=0.1),
        }

    state: dict[str, Any] = {
        "new.embeddings.word_embeddings.weight": normal(int(settings["vocab_size"]), hidden),
        **norm("new.embeddings.LayerNorm"),
    }
    if int(settings["type_vocab_size"]) > 0:
        state["new.embeddings.token_type_embeddings.weight"] = normal(
            int(settings["type_vocab_size"]), hidden
        )
    for i in range(int(settings["num_hidden_layers"])):
        p = f"new.encoder.layer.{i}"
        if settings["pack_qkv"]:
            state[f"{p}.attention.qkv_proj.weight"] = normal(3 * hidden, hidden)
            state[f"{p}.attention.qkv_proj.bias"] = normal(3 * hidden)
        else:
            for name in ("q_proj", "k_proj", "v_proj"):
                state[f"{p}.attention.{name}.weight"] = normal(hidden, hidden)
                state[f"{p}.attention.{name}.bias"] = normal(hidden)
        state[f"{p}.attention.o_proj.weight"] = normal(hidden, hidden)
        state[f"{p}.attention.o_proj.bias"] = normal(hidden)
        state.update(norm(f"{p}.attn_ln"))
        state[f"{p}.mlp.up_gate_proj.weight"] = normal(2 * inter, hidden)
        state[f"{p}.mlp.down_proj.weight"] = normal(hidden, inter)
        state[f"{p}.mlp.down_proj.bias"] = normal(hidden)
        state.update(norm(f"{p}.mlp_ln"))
    num_labels = len(settings["id2label"])
    state["new.pooler.dense.weight"] = normal(hidden, hidden)
    state["new.pooler.dense.bias"] = normal(hidden)
    state["classifier.weight"] = normal(num_labels, hidden)
    state["classifier.bias"] = normal(num_labels)
    directory.mkdir(parents=True, exist_ok=True)
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (directory / "config.json").write_text(json.dumps(dict(sorted(settings.items())), indent=2))
    save_xlmr_tokenizer(directory, model_max_length=int(settings["max_position_embeddings"]))
    return directory


# --- mmbert-rerank-32k-2d-matryoshka at toy size ------------------------------------------


# 8 layers (global at 0, 3, 6), a ±4-token local window, 32K positions, RoPE theta 160000 on
# both layer types; exits and dims scale the published [3, 6, 11, 22] x [768 .. 64] grid.
def gte_reference_config(new: dict[str, Any]) -> dict[str, Any]:
    """transformers' native ``gte`` config for the weights of a GTE "new" ``config.json``.

    The "new" code's NTK RoPE, ``inv_freq_i = (theta * f) ** (-2i / d) / f ** (2 / d)``, is
    transformers' "linear" RoPE (``inv_freq_i = theta' ** (-2i / d) / factor'``) with
    ``theta' = theta * f`` and ``factor' = f ** (2 / d)``; ``d`` is the head dimension.
    Without ``rope_scaling`` (or factor <= 1) it is plain RoPE with ``theta``.
    """
    head_dim = new["hidden_size"] // new["num_attention_heads"]
    theta = float(new.get("rope_theta", 10000.0))
    scaling = new.get("rope_scaling") or {}
    factor = float(scaling.get("factor", 1.0))
    if factor > 1.0:
        rope = {
            "rope_type": "linear",
            "rope_theta": theta * factor,
            "factor": factor ** (2 / head_dim),
        }
    else:
        rope = {"rope_type": "default", "rope_theta": theta}
    keys = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "id2label",
        "label2id",
    )
    return {
        "model_type": "gte",
        "architectures": ["GteForSequenceClassification"],
        **{k: new[k] for k in keys if k in new},
        "rope_parameters": rope,
    }


def make_gte_reference_checkpoint(directory: Path, target: Path) -> Path:
    """Write to ``target`` the GTE "new" checkpoint ``directory``'s safetensors and tokenizer
    under transformers' native ``gte`` config: the reference our native engine is checked
    against (transformers rejects the "new" config's NTK rope_scaling)."""
    new = json.loads((directory / "config.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(gte_reference_config(new), indent=2))
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(directory / name, target / name)
    return target
