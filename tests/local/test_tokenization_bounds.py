"""The tokenizer boundary: only what the window can use is tokenized, and a tokenizer that
panics is a typed error for the documents it panicked on."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins.errors import InputTooLongError, InvalidInputError
from rerank_plugins.local.checkpoint import load_tokenizer
from rerank_plugins.local.tokenization import PairEncoder
from rerank_plugins.testing import random_text
from tests.conftest import FIXTURES

REAL = FIXTURES / "Alibaba-NLP__gte-reranker-modernbert-base"


class SpyTokenizer:
    """A tokenizer that records the longest text it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.longest = 0

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.longest = max(self.longest, len(text))
        return self.inner.encode(text, **kwargs)

    def encode_batch(self, texts: Sequence[str], **kwargs: Any) -> Any:
        self.longest = max([self.longest, *map(len, texts)])
        return self.inner.encode_batch(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=["word-level", "real BPE"])
def tokenizer(request: pytest.FixtureRequest, modernbert_dir: Path) -> Iterator[Any]:
    if request.param == "word-level":
        yield load_tokenizer(modernbert_dir)
        return
    if not (REAL / "tokenizer.json").is_file():
        pytest.skip("the seed model's tokenizer is not in the shared fixtures")
    yield load_tokenizer(REAL)


def texts() -> list[str]:
    rng = random.Random(3)
    words = random_text(rng, 30_000)
    return [
        words,
        "x" * 200_000,  # one 'word' longer than any cut
        "  \n\t " * 30_000 + words,  # whitespace before the words
        "ab" * 100_000,
        "日本語のテキスト" * 20_000,
        words[:200],  # short: encoded whole
    ]


@pytest.mark.parametrize("overflow", ["truncate", "error"])
def test_a_long_document_is_cut_before_tokenizing_with_the_same_tokens(
    tokenizer: Any, overflow: str
) -> None:
    spy = SpyTokenizer(tokenizer)
    bounded = PairEncoder(spy, max_length=64, overflow="truncate")
    for text in texts():
        spy.longest = 0
        full = tokenizer.encode(text, add_special_tokens=False)
        n_tokens = len(full)
        q = tokenizer.encode("query words", add_special_tokens=False)
        room = 64 - tokenizer.num_special_tokens_to_add(is_pair=True) - len(q)
        if overflow == "error" and len(full) > room:
            with pytest.raises(InputTooLongError):
                PairEncoder(spy, max_length=64, overflow="error").encode("query words", [text])
            continue
        (pair,) = bounded.encode("query words", [text])
        full.truncate(room)
        expected = tokenizer.post_process(q, full, add_special_tokens=True)
        assert pair.ids == expected.ids
        assert pair.truncated == (n_tokens > room)
        if n_tokens > 1000:  # many tokens: only a prefix was encoded
            assert spy.longest < len(text)
        # (a text of few tokens, e.g. one 200,000-letter 'word', is cheap to encode whole)


def test_a_30_mb_document_is_never_tokenized_whole(modernbert_dir: Path) -> None:
    spy = SpyTokenizer(load_tokenizer(modernbert_dir))
    encoder = PairEncoder(spy, max_length=512)
    document = random_text(random.Random(0), 5_000_000)  # about 30 MB
    (pair,) = encoder.encode("a query", [document])
    assert pair.truncated and pair.tokens == 512
    assert spy.longest < 512 * 64
    with pytest.raises(InputTooLongError):
        encoder.encode_query(document)
    assert spy.longest < 512 * 64


class PanicException(BaseException):
    """What pyo3 raises when Rust code panics (pyo3_runtime.PanicException): no Exception."""


class PanickingTokenizer(SpyTokenizer):
    def encode_batch(self, texts: Sequence[str], **kwargs: Any) -> Any:
        if any("boom" in t for t in texts):
            raise PanicException("index out of bounds")
        return super().encode_batch(texts, **kwargs)

    def encode(self, text: str, **kwargs: Any) -> Any:
        if "boom" in text:
            raise PanicException("index out of bounds")
        return super().encode(text, **kwargs)


def test_a_tokenizer_panic_is_a_typed_error_naming_the_document(modernbert_dir: Path) -> None:
    encoder = PairEncoder(PanickingTokenizer(load_tokenizer(modernbert_dir)), max_length=64)
    with pytest.raises(InvalidInputError, match="tokenizer") as caught:
        encoder.encode("a query", ["fine", "boom", "fine too", "boom again"])
    assert caught.value.indices == (1, 3)
    with pytest.raises(InvalidInputError, match="tokenizer"):
        encoder.encode_query("boom")


def test_a_panic_in_a_bulk_run_is_that_rows_error(tmp_path: Path, modernbert_dir: Path) -> None:
    pytest.importorskip("pyarrow")
    import json

    from rerank_plugins import load_scorer
    from rerank_plugins.bulk import score_file

    scorer: Any = load_scorer(modernbert_dir, device="cpu")
    scorer.encoder.tokenizer = PanickingTokenizer(scorer.encoder.tokenizer)
    source = tmp_path / "in.jsonl"
    rows = [{"query": "a query", "text": t} for t in ("fine", "boom", "fine")]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = score_file(source, tmp_path / "out", model=scorer, progress=False)
    assert (summary.rows, summary.errors) == (3, 1)
    written = [json.loads(x) for x in (tmp_path / "out" / "part-000000.jsonl").open()]
    assert [w["error"] is None for w in written] == [True, False, True]
    assert "tokenizer" in written[1]["error"]
