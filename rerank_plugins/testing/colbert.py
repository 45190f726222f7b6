"""Random-weight PyLate late-interaction checkpoints (GTE-ModernColBERT-v1 layout)."""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.testing.modernbert import TINY_MODERNBERT
from rerank_plugins.testing.words import (
    save_word_tokenizer,
)

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
