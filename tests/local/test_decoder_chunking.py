"""Decoder rerankers past the window: ``overflow="chunk"`` scores each token window of a
long document as its own prompt (template and query, window, suffix) and aggregates;
``max_tokens_per_doc`` cuts documents first. References: the windows' prompts built here
from transformers' tokenizer and scored by transformers' eager model (the card's code)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import transformers

from rerank_plugins import InvalidInputError
from rerank_plugins.local.chunking import aggregate
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.local.decoder_prompt import QWEN3_INSTRUCTION, QWEN3_PREFIX, QWEN3_SUFFIX
from rerank_plugins.testing import make_qwen3_reranker_checkpoint, random_text
from tests.contract import QUERY
from tests.local.test_decoder import card_logits

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3-reranker")


def window_prompts(
    directory: Path, doc: str, *, chunk_tokens: int | None, overlap: int, cap: int | None = None
) -> list[list[int]]:
    """The card's prompt of each window of ``doc``'s tokens: prefix, the content up to the
    document, the window, suffix; windows start every ``chunk_tokens - overlap`` tokens,
    the last one ending at the document's end."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    prefix = tok.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)
    lead = f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {QUERY}\n<Document>: "
    # The lead's last token merges with the document's first word.
    n_lead = len(tok.encode(lead, add_special_tokens=False)) - 1
    content = tok.encode(lead + doc, add_special_tokens=False)
    head, tokens = content[:n_lead], content[n_lead:]
    if cap is not None:
        tokens = tokens[:cap]
    room = MAX_LENGTH - len(prefix) - len(suffix) - n_lead
    size = room if chunk_tokens is None else chunk_tokens
    if len(tokens) <= room:
        return [prefix + head + tokens + suffix]
    windows = []
    start = 0
    while True:
        windows.append(tokens[start : start + size])
        if start + size >= len(tokens):
            break
        start += size - overlap
    return [prefix + head + w + suffix for w in windows]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap", "how"),
    [(None, 0, "max"), (None, 0, "mean"), (37, 9, "max"), (37, 9, "mean"), (37, 9, "top2")],
)
def test_chunked_score_is_the_aggregate_of_the_windows_prompts(
    qwen3_dir: Path, chunk_tokens: int | None, overlap: int, how: str
) -> None:
    long = random_text(random.Random(5), 300)
    scorer = DecoderScorer(
        qwen3_dir,
        device="cpu",
        max_length=MAX_LENGTH,
        overflow="chunk",
        chunk_tokens=chunk_tokens,
        chunk_overlap=overlap,
        aggregate=how,  # type: ignore[arg-type]
        batch_tokens=300,
    )
    got = scorer.score(QUERY, ["w1 w2", long])[1]
    prompts = window_prompts(qwen3_dir, long, chunk_tokens=chunk_tokens, overlap=overlap)
    assert len(prompts) >= 3
    if chunk_tokens is not None:  # the last window is shorter than the others
        assert len(prompts[-1]) < len(prompts[0])
    ref = [sigmoid(x) for x in card_logits(qwen3_dir, prompts, ("no", "yes"))]
    assert got.chunks == len(prompts)
    assert got.truncated is False
    assert got.tokens == sum(len(p) for p in prompts)
    assert abs(got.value - aggregate(ref, how)) <= 1e-4  # type: ignore[arg-type]


@pytest.mark.parametrize("template", ["qwen3-reranker", "mxbai-rerank-v2"])
def test_chunked_scores_with_the_prefix_cache_equal_without(qwen3_dir: Path, template: str) -> None:
    rng = random.Random(6)
    docs = [random_text(rng, n) for n in (250, 4, 400, 30)]
    scores = [
        DecoderScorer(
            qwen3_dir,
            template=template,
            device="cpu",
            max_length=MAX_LENGTH,
            overflow="chunk",
            chunk_tokens=30,
            chunk_overlap=5,
            aggregate="mean",
            prefix_cache=cache,
            output="logit",
            batch_tokens=400,
        ).score(QUERY, docs)
        for cache in (True, False)
    ]
    assert [s.chunks for s in scores[0]] == [s.chunks for s in scores[1]]
    assert scores[0][0].chunks and scores[0][2].chunks and scores[0][1].chunks is None
    for a, b in zip(*scores, strict=True):
        assert abs(a.value - b.value) <= 1e-4


def test_documents_that_fit_are_scored_unchanged(qwen3_dir: Path) -> None:
    rng = random.Random(7)
    docs = [random_text(rng, n) for n in (3, 10, 900, 25)]
    plain = DecoderScorer(qwen3_dir, device="cpu", max_length=512).score(QUERY, docs)
    chunked = DecoderScorer(qwen3_dir, device="cpu", max_length=512, overflow="chunk").score(
        QUERY, docs
    )
    fitting = [0, 1, 3]
    assert all(not plain[i].truncated for i in fitting) and plain[2].truncated
    assert chunked[2].chunks and not chunked[2].truncated
    for i in fitting:
        assert chunked[i].chunks is None and not chunked[i].truncated
        assert chunked[i].tokens == plain[i].tokens
        assert abs(chunked[i].value - plain[i].value) <= 1e-6


def test_max_tokens_per_doc_cuts_documents_first(qwen3_dir: Path) -> None:
    long, short = random_text(random.Random(8), 300), "w1 w2"
    scorer = DecoderScorer(
        qwen3_dir, device="cpu", max_length=MAX_LENGTH, max_tokens_per_doc=20, output="logit"
    )
    got = scorer.score(QUERY, [long, short])
    prompt = window_prompts(qwen3_dir, long, chunk_tokens=None, overlap=0, cap=20)
    assert len(prompt) == 1
    assert got[0].truncated and got[0].tokens == len(prompt[0])
    assert abs(got[0].value - card_logits(qwen3_dir, prompt, ("no", "yes"))[0]) <= 1e-4
    assert not got[1].truncated
    # With "chunk" the cap comes first: the capped document is chunked, and flagged.
    chunked = DecoderScorer(
        qwen3_dir,
        device="cpu",
        max_length=MAX_LENGTH,
        overflow="chunk",
        chunk_tokens=30,
        max_tokens_per_doc=70,
    ).score(QUERY, [long])[0]
    assert chunked.truncated and chunked.chunks == 3


def test_bad_chunk_options_raise(qwen3_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="overflow"):
        DecoderScorer(qwen3_dir, device="cpu", overflow="split")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="chunk_overlap"):
        DecoderScorer(qwen3_dir, device="cpu", overflow="chunk", chunk_tokens=8, chunk_overlap=8)
    scorer = DecoderScorer(
        qwen3_dir, device="cpu", max_length=MAX_LENGTH, overflow="chunk", chunk_tokens=500
    )
    with pytest.raises(InvalidInputError, match="does not fit"):
        scorer.score(QUERY, [random_text(random.Random(9), 300)])
