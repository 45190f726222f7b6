"""Past the window (``overflow="chunk"``) and per-document caps (``max_tokens_per_doc``) on
the cross-encoders: each window's score equals transformers' own score of that window
(eager, fp32, one pair at a time), the document's score is the aggregate, documents that
fit are scored as before, and a cap is the transformers score of the first N tokens."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from rerank_plugins import InvalidInputError, Score
from rerank_plugins.local.chunking import (
    ChunkOptions,
    aggregate,
    check_aggregate,
    chunk_spans,
)
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_gte_new_checkpoint, make_gte_reference_checkpoint
from rerank_plugins.testing.words import random_text
from tests.contract import QUERY

TOLERANCE = 1e-4
MAX_LENGTH = 40  # query (4) + specials (3) leave 33 document tokens
ROOM = MAX_LENGTH - 3 - 4
GTE_ROOM = ROOM - 1  # XLM-R pairs have four special tokens: <s> q </s></s> d </s>
AGGREGATES = ["max", "mean", "top2", "top3"]


# --- the pure functions ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 8, 9, 33, 100])
@pytest.mark.parametrize(("size", "overlap"), [(8, 0), (8, 3), (5, 4), (1, 0)])
def test_spans_follow_the_definition(n: int, size: int, overlap: int) -> None:
    spans = chunk_spans(n, size, overlap)
    stride = size - overlap
    for i, (start, stop) in enumerate(spans):
        assert start == i * stride
        assert stop == min(start + size, n)
    assert spans[-1][1] == n  # the last chunk ends at the document's end
    assert len(spans) == 1 or spans[-2][1] < n  # and no chunk comes after it
    covered = {t for a, b in spans for t in range(a, b)}
    assert covered == set(range(n))


def test_aggregates() -> None:
    values = [0.5, -1.0, 2.0, 1.0]
    assert aggregate(values, "max") == 2.0
    assert aggregate(values, "mean") == pytest.approx(0.625)
    assert aggregate(values, "top2") == pytest.approx(1.5)
    assert aggregate(values, "top3") == pytest.approx(3.5 / 3)
    assert aggregate([3.0], "top3") == 3.0
    assert aggregate([float("nan"), 1.0], "max") != aggregate([float("nan"), 1.0], "max")


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_tokens": 0},
        {"chunk_tokens": 4, "chunk_overlap": 4},
        {"chunk_overlap": -1},
        {"aggregate": "median"},
        {"chunk_tokens": True},
    ],
)
def test_bad_chunk_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        ChunkOptions(**options)


def test_check_aggregate_names_the_choices() -> None:
    with pytest.raises(InvalidInputError, match="top2"):
        check_aggregate("min")


# --- exactness against transformers --------------------------------------------------------


def _reference(model: Any, tok: Any, query: str, texts: list[str]) -> list[float]:
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(query, text, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def _modernbert_reference(directory: Path) -> Callable[[str, list[str]], list[float]]:
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    ).eval()
    return lambda q, texts: _reference(model, tok, q, texts)


@pytest.fixture(scope="module")
def gte_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_gte_new_checkpoint(tmp_path_factory.mktemp("ckpt") / "gte-new")


@pytest.fixture(scope="module")
def references(
    modernbert_dir: Path, gte_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Callable[[str, list[str]], list[float]]]:
    ref_dir = make_gte_reference_checkpoint(gte_dir, tmp_path_factory.mktemp("ref") / "gte")
    tok = transformers.AutoTokenizer.from_pretrained(str(ref_dir))
    gte = transformers.GteForSequenceClassification.from_pretrained(
        str(ref_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    modernbert = _modernbert_reference(modernbert_dir)
    return {
        "native": modernbert,
        "transformers": modernbert,
        "gte": lambda q, texts: _reference(gte, tok, q, texts),
    }


def _scorer(kind: str, modernbert_dir: Path, gte_dir: Path, **options: Any) -> CrossEncoderScorer:
    directory = gte_dir if kind == "gte" else modernbert_dir
    engine = "transformers" if kind == "transformers" else "auto"
    return CrossEncoderScorer(
        directory,
        device="cpu",
        engine=engine,
        output="logit",
        max_length=MAX_LENGTH,
        batch_tokens=96,
        **options,
    )


def _windows(words: list[str], size: int, overlap: int) -> list[str]:
    return [" ".join(words[a:b]) for a, b in chunk_spans(len(words), size, overlap)]


KINDS = ["native", "gte", "transformers"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("chunk_tokens", "overlap"),
    [(None, 0), (None, 7), (12, 0), (12, 5)],
    ids=["room", "room-overlap", "short-last", "short-last-overlap"],
)
def test_chunked_score_is_the_aggregate_of_transformers_window_scores(
    kind: str,
    chunk_tokens: int | None,
    overlap: int,
    modernbert_dir: Path,
    gte_dir: Path,
    references: dict[str, Callable[[str, list[str]], list[float]]],
) -> None:
    rng = random.Random(7)
    room = GTE_ROOM if kind == "gte" else ROOM
    docs = [random_text(rng, n) for n in (100, 5, 71, room, room + 1)]
    size = room if chunk_tokens is None else chunk_tokens
    expected_windows = [_windows(d.split(), size, overlap) for d in docs]
    assert [len(w) for w in expected_windows[:2]] != [1, 1]
    for how in AGGREGATES:
        scorer = _scorer(
            kind,
            modernbert_dir,
            gte_dir,
            overflow="chunk",
            chunk_tokens=chunk_tokens,
            chunk_overlap=overlap,
            aggregate=how,
        )
        scores = scorer.score(QUERY, docs)
        for doc, windows, score in zip(docs, expected_windows, scores, strict=True):
            fits = len(doc.split()) <= room
            ref = references[kind](QUERY, [doc] if fits else windows)
            assert score.value == pytest.approx(aggregate(ref, how), abs=TOLERANCE), (how, doc)
            assert score.chunks == (None if fits else len(windows))
            assert score.truncated is False


@pytest.mark.parametrize("kind", KINDS)
def test_documents_that_fit_score_as_they_do_without_chunking(
    kind: str, modernbert_dir: Path, gte_dir: Path
) -> None:
    rng = random.Random(3)
    docs = [random_text(rng, n) for n in (1, 20, GTE_ROOM if kind == "gte" else ROOM)]
    plain = _scorer(kind, modernbert_dir, gte_dir).score(QUERY, docs)
    chunked = _scorer(kind, modernbert_dir, gte_dir, overflow="chunk").score(QUERY, docs)
    assert chunked == plain


def test_chunks_of_all_documents_share_the_packed_batches(modernbert_dir: Path) -> None:
    rng = random.Random(11)
    docs = [random_text(rng, n) for n in (90, 3, 140)]
    scorer = CrossEncoderScorer(
        modernbert_dir,
        device="cpu",
        output="logit",
        max_length=MAX_LENGTH,
        overflow="chunk",
        batch_tokens=10_000,  # everything in one forward
    )
    calls: list[int] = []
    logits = scorer.classifier.logits

    def counting(batch: Any) -> torch.Tensor:
        calls.append(len(batch))
        return logits(batch)

    scorer.classifier.logits = counting  # type: ignore[method-assign]
    try:
        scores = scorer.score(QUERY, docs)
    finally:
        del scorer.classifier.logits
    assert calls == [sum(s.chunks or 1 for s in scores)]  # 3 + 1 + 5 sequences, one call
    assert [s.chunks for s in scores] == [3, None, 5]


def test_a_chunk_size_that_does_not_fit_the_query_is_refused(modernbert_dir: Path) -> None:
    scorer = _scorer("native", modernbert_dir, modernbert_dir, overflow="chunk", chunk_tokens=ROOM)
    with pytest.raises(InvalidInputError, match="chunk_tokens"):
        scorer.score(QUERY + " w9", [random_text(random.Random(1), 60)])


def test_chunk_tokens_count_every_window(modernbert_dir: Path) -> None:
    scorer = _scorer("native", modernbert_dir, modernbert_dir, overflow="chunk")
    (score,) = scorer.score(QUERY, [random_text(random.Random(2), 70)])
    # 70 tokens in windows of 33: 33 + 33 + 4, each framed by the query and 3 specials.
    assert score.chunks == 3 and score.tokens == 70 + 3 * (4 + 3)


# --- max_tokens_per_doc ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_max_tokens_per_doc_scores_the_first_n_tokens(
    kind: str,
    modernbert_dir: Path,
    gte_dir: Path,
    references: dict[str, Callable[[str, list[str]], list[float]]],
) -> None:
    rng = random.Random(5)
    docs = [random_text(rng, n) for n in (30, 6, 100)]
    scorer = _scorer(kind, modernbert_dir, gte_dir, max_tokens_per_doc=6)
    scores = scorer.score(QUERY, docs)
    ref = references[kind](QUERY, [" ".join(d.split()[:6]) for d in docs])
    assert [s.value for s in scores] == pytest.approx(ref, abs=TOLERANCE)
    assert [s.truncated for s in scores] == [True, False, True]


def test_max_tokens_per_doc_caps_the_document_before_chunking(
    modernbert_dir: Path, references: dict[str, Callable[[str, list[str]], list[float]]]
) -> None:
    doc = random_text(random.Random(6), 200)
    scorer = _scorer(
        "native", modernbert_dir, modernbert_dir, overflow="chunk", max_tokens_per_doc=50
    )
    (score,) = scorer.score(QUERY, [doc])
    windows = _windows(doc.split()[:50], ROOM, 0)
    assert score.chunks == len(windows) == 2
    assert score.truncated is True
    expected = aggregate(references["native"](QUERY, windows), "max")
    assert score.value == pytest.approx(expected, abs=TOLERANCE)


def test_max_tokens_per_doc_comes_before_the_error_policy(modernbert_dir: Path) -> None:
    scorer = _scorer(
        "native", modernbert_dir, modernbert_dir, overflow="error", max_tokens_per_doc=10
    )
    (score,) = scorer.score(QUERY, [random_text(random.Random(6), 200)])
    assert isinstance(score, Score) and score.truncated and score.tokens == 10 + 4 + 3


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_max_tokens_per_doc_is_refused(modernbert_dir: Path, value: Any) -> None:
    with pytest.raises(InvalidInputError):
        _scorer("native", modernbert_dir, modernbert_dir, max_tokens_per_doc=value)


# --- the adapters take the options through model_kwargs ------------------------------------


def test_adapters_chunk_through_model_kwargs(modernbert_dir: Path) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    rng = random.Random(8)
    texts = [random_text(rng, n) for n in (120, 8, 70, 30)]
    options = {"device": "cpu", "max_length": MAX_LENGTH, "overflow": "chunk", "aggregate": "mean"}
    scores = CrossEncoderScorer(modernbert_dir, **options).score(QUERY, texts)
    order = sorted(range(len(texts)), key=lambda i: -scores[i].value)
    compressor = RerankCompressor(model=str(modernbert_dir), model_kwargs=options, top_n=4)
    ranked = compressor.compress_documents([Document(page_content=t) for t in texts], QUERY)
    assert [d.page_content for d in ranked] == [texts[i] for i in order]
    post = RerankPostprocessor(model=str(modernbert_dir), model_kwargs=options, top_n=4)
    nodes = post.postprocess_nodes(
        [NodeWithScore(node=TextNode(text=t)) for t in texts], query_str=QUERY
    )
    assert [n.node.get_content() for n in nodes] == [texts[i] for i in order]
    assert [n.score for n in nodes] == pytest.approx([scores[i].value for i in order], abs=1e-6)
