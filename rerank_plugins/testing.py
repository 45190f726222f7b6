"""Test doubles that ship with the library: tiny random checkpoints in the real layout.

Nothing here downloads anything. ``make_modernbert_checkpoint`` writes ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json`` exactly as a hub
checkpoint has them, so the code under test takes the real loading path. Needs the
``torch`` extra.
"""

from __future__ import annotations

import json
import random
import shutil
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from rerank_plugins._imports import require
from rerank_plugins.scoring import Score, ScoreKind, check_inputs

__all__ = [
    "COLBERT_SETTINGS",
    "TINY_GTE_NEW",
    "TINY_MATRYOSHKA",
    "TINY_MODERNBERT",
    "WORDS",
    "FunctionScorer",
    "gte_reference_config",
    "make_colbert_checkpoint",
    "make_gte_new_checkpoint",
    "make_gte_reference_checkpoint",
    "make_matryoshka_checkpoint",
    "make_modernbert_checkpoint",
    "random_text",
    "save_colbert_word_tokenizer",
    "save_mmbert_word_tokenizer",
    "save_word_tokenizer",
    "save_xlmr_tokenizer",
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


class FunctionScorer:
    """A :class:`~rerank_plugins.Scorer` from a plain function ``fn(query, document) -> float``.

    The in-process test double of the scoring seam (like ``httpx.MockTransport`` is for
    transports): adapters and pipelines can be tested with scores you control. It
    validates its input like every scorer and counts its calls in ``calls``.
    """

    def __init__(self, fn: Callable[[str, str], float], *, kind: ScoreKind = "logit") -> None:
        self.fn = fn
        self.kind: ScoreKind = kind
        self.calls = 0

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        self.calls += 1
        return [Score(float(self.fn(query, d)), self.kind, tokens=None) for d in docs]

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        return self.score(query, documents)


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

# GTE-ModernColBERT-v1's own config_sentence_transformers.json settings, for checkpoints
# built without the real files.
COLBERT_SETTINGS: dict[str, Any] = {
    "prompts": {},
    "default_prompt_name": None,
    "similarity_fn_name": "MaxSim",
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 48,
    "document_length": 300,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
    "do_query_expansion": False,
}

# The trunk of a tiny ColBERT: TINY_MODERNBERT's shape (±4-token local window).
_TINY_COLBERT_TRUNK = {k: v for k, v in TINY_MODERNBERT.items() if k != "classifier_pooling"}

_COLBERT_FIXTURE = "lightonai__GTE-ModernColBERT-v1"
_COLBERT_BASE_FIXTURE = "Alibaba-NLP__gte-modernbert-base"
_COLBERT_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_colbert_word_tokenizer(directory: Path, *, model_max_length: int) -> int:
    """Write :func:`save_word_tokenizer`'s tokenizer plus the ``"[Q] "``/``"[D] "`` prefix
    tokens and one token per ASCII punctuation character (so skiplists have something to
    skip: ``"w1, w2"`` is ``w1 , w2``). Returns the vocabulary size (ids ``0..size-1``)."""
    tokenizers = require("tokenizers")
    save_word_tokenizer(directory, model_max_length=model_max_length)
    tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.add_tokens(["[Q] ", "[D] ", *string.punctuation])
    tok.save(str(directory / "tokenizer.json"))
    return int(tok.get_vocab_size(with_added_tokens=True))


def make_colbert_checkpoint(
    directory: str | Path,
    *,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    fixtures: str | Path | None = None,
    settings: dict[str, Any] | None = None,
    dense: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight late-interaction checkpoint in PyLate's layout.

    As ``lightonai/GTE-ModernColBERT-v1`` has it: a bare ModernBERT trunk
    (``config.json`` + ``model.safetensors``, keys without ``model.``), ``modules.json``
    (Transformer at the root, then ``pylate.models.Dense.Dense`` in ``1_Dense/``),
    ``1_Dense/config.json`` + ``1_Dense/model.safetensors`` (``linear.weight``, hidden →
    128, no bias, identity activation), ``sentence_bert_config.json``,
    ``config_sentence_transformers.json`` and the tokenizer files.

    ``fixtures`` is the shared fixtures folder: when given, the real configs and tokenizer
    of GTE-ModernColBERT-v1 are copied (``config.json`` is gte-modernbert-base's with the
    vocabulary grown to 50370 for ``[Q] ``/``[D] ``); otherwise a word tokenizer with those
    tokens and :data:`COLBERT_SETTINGS` are written. The trunk is always scaled down to
    ``TINY_MODERNBERT``'s shape; ``config`` overrides trunk settings, ``settings`` the
    PyLate settings (``query_length``, ``do_query_expansion``, ...) and ``dense`` the
    projection's config (``out_features``, ``bias``, ``activation_function``).
    """
    torch = require("torch")
    transformers = require("transformers")
    safetensors_torch = require("safetensors.torch")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    if fixtures is not None:
        source = Path(fixtures) / _COLBERT_FIXTURE
        base = json.loads((Path(fixtures) / _COLBERT_BASE_FIXTURE / "config.json").read_text())
        for name in _COLBERT_TOKENIZER_FILES:
            shutil.copyfile(source / name, directory / name)
        tokenizers = require("tokenizers")
        tok = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        vocab_size = int(tok.get_vocab_size(with_added_tokens=True))  # 50370 with [Q]/[D]
        st_config = json.loads((source / "config_sentence_transformers.json").read_text())
        sbert_config = json.loads((source / "sentence_bert_config.json").read_text())
        modules = json.loads((source / "modules.json").read_text())
        dense_config = json.loads((source / "1_Dense" / "config.json").read_text())
    else:
        base = {"architectures": ["ModernBertModel"], "model_type": "modernbert"}
        base.update(pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
        vocab_size = save_colbert_word_tokenizer(directory, model_max_length=299)
        st_config = dict(COLBERT_SETTINGS)
        sbert_config = {"max_seq_length": 299, "do_lower_case": False}
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ]
        dense_config = {
            "in_features": 768,
            "out_features": 128,
            "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
        }

    trunk = {**base, **_TINY_COLBERT_TRUNK, "vocab_size": vocab_size, **(config or {})}
    torch.manual_seed(seed)
    model = transformers.ModernBertModel(transformers.ModernBertConfig(**trunk))
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (directory / "config.json").write_text(json.dumps(trunk, indent=2))

    st_config.update(settings or {})
    dense_config.update({"in_features": int(trunk["hidden_size"]), **(dense or {})})
    gen = torch.Generator().manual_seed(seed + 1)
    fan_in, fan_out = int(dense_config["in_features"]), int(dense_config["out_features"])
    projection = {"linear.weight": torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5}
    if dense_config.get("bias"):
        projection["linear.bias"] = 0.1 * torch.randn(fan_out, generator=gen)
    (directory / "1_Dense").mkdir(exist_ok=True)
    safetensors_torch.save_file(
        projection, str(directory / "1_Dense" / "model.safetensors"), metadata={"format": "pt"}
    )
    (directory / "1_Dense" / "config.json").write_text(json.dumps(dense_config))
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "sentence_bert_config.json").write_text(json.dumps(sbert_config, indent=2))
    (directory / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    return directory
