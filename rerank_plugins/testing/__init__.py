"""Test doubles that ship with the library: tiny random checkpoints in the real layout.

Nothing here downloads anything. ``make_modernbert_checkpoint`` writes ``config.json``,
``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json`` exactly as a hub
checkpoint has them, so the code under test takes the real loading path. Needs the
``torch`` extra.
"""

from __future__ import annotations

from rerank_plugins.testing.colbert import (
    COLBERT_SETTINGS,
    make_colbert_checkpoint,
    save_colbert_word_tokenizer,
)
from rerank_plugins.testing.decoder import (
    QWEN3_RERANKER_CHAT_TEMPLATE,
    TINY_MXBAI_V2,
    TINY_QWEN3_RERANKER,
    make_mxbai_v2_checkpoint,
    make_qwen3_reranker_checkpoint,
)
from rerank_plugins.testing.eval_fixture import EVAL_FIXTURE_SIZE, write_eval_fixture
from rerank_plugins.testing.function_scorer import FunctionScorer
from rerank_plugins.testing.gte import (
    TINY_GTE_NEW,
    gte_reference_config,
    make_gte_new_checkpoint,
    make_gte_reference_checkpoint,
    save_xlmr_tokenizer,
)
from rerank_plugins.testing.matryoshka import (
    TINY_MATRYOSHKA,
    make_matryoshka_checkpoint,
    save_mmbert_word_tokenizer,
)
from rerank_plugins.testing.modernbert import (
    TINY_MODERNBERT,
    make_modernbert_checkpoint,
)
from rerank_plugins.testing.servers import free_port, wait_until_healthy
from rerank_plugins.testing.words import (
    WORDS,
    random_text,
    save_word_tokenizer,
)

__all__ = [
    "COLBERT_SETTINGS",
    "EVAL_FIXTURE_SIZE",
    "QWEN3_RERANKER_CHAT_TEMPLATE",
    "TINY_GTE_NEW",
    "TINY_MATRYOSHKA",
    "TINY_MODERNBERT",
    "TINY_MXBAI_V2",
    "TINY_QWEN3_RERANKER",
    "WORDS",
    "FunctionScorer",
    "free_port",
    "gte_reference_config",
    "make_colbert_checkpoint",
    "make_gte_new_checkpoint",
    "make_gte_reference_checkpoint",
    "make_matryoshka_checkpoint",
    "make_modernbert_checkpoint",
    "make_mxbai_v2_checkpoint",
    "make_qwen3_reranker_checkpoint",
    "random_text",
    "save_colbert_word_tokenizer",
    "save_mmbert_word_tokenizer",
    "save_word_tokenizer",
    "save_xlmr_tokenizer",
    "wait_until_healthy",
    "write_eval_fixture",
]
