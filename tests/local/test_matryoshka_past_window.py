"""The 2D-Matryoshka reranker past the window (chunks, per-document caps) against the
transformers reference of test_matryoshka, at an early exit and at the full depth; and its
cascade (every document to an early exit, the best on to the last layer)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins import InvalidInputError, rank
from rerank_plugins.local.chunking import aggregate, chunk_spans
from rerank_plugins.local.matryoshka import MatryoshkaScorer
from rerank_plugins.testing import make_matryoshka_checkpoint, random_text
from tests.contract import QUERY, ScorerContract
from tests.local.test_matryoshka import Reference

MAX_LENGTH = 30
ROOM = MAX_LENGTH - 3 - 4


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_matryoshka_checkpoint(tmp_path_factory.mktemp("mm") / "mmbert-2d")


@pytest.fixture(scope="module")
def reference(mm_dir: Path) -> Reference:
    return Reference(mm_dir)


def _windows(doc: str, size: int, overlap: int) -> list[str]:
    words = doc.split()
    return [" ".join(words[a:b]) for a, b in chunk_spans(len(words), size, overlap)]


@pytest.mark.parametrize("layer", [2, 8])
@pytest.mark.parametrize("how", ["max", "mean", "top2", "top3"])
def test_chunked_score_is_the_aggregate_of_reference_window_scores(
    mm_dir: Path, reference: Reference, layer: int, how: str
) -> None:
    rng = random.Random(9)
    docs = [random_text(rng, n) for n in (80, 6, ROOM + 2)]
    scorer = MatryoshkaScorer(
        mm_dir,
        layer=layer,
        device="cpu",
        output="logit",
        max_length=MAX_LENGTH,
        overflow="chunk",
        chunk_tokens=10,
        chunk_overlap=3,
        aggregate=how,  # type: ignore[arg-type]
    )
    dim = scorer.dim
    for doc, score in zip(docs, scorer.score(QUERY, docs), strict=True):
        fits = len(doc.split()) <= ROOM
        texts = [doc] if fits else _windows(doc, 10, 3)
        ref = reference.logits(QUERY, texts)[layer, dim]
        assert score.value == pytest.approx(aggregate(ref, how), abs=1e-4)  # type: ignore[arg-type]
        assert score.chunks == (None if fits else len(texts))


def test_max_tokens_per_doc_scores_the_first_n_tokens(mm_dir: Path, reference: Reference) -> None:
    docs = [random_text(random.Random(4), n) for n in (40, 3)]
    scorer = MatryoshkaScorer(mm_dir, device="cpu", output="logit", max_tokens_per_doc=5)
    scores = scorer.score(QUERY, docs)
    ref = reference.logits(QUERY, [" ".join(d.split()[:5]) for d in docs])[8, scorer.dim]
    assert [s.value for s in scores] == pytest.approx(ref, abs=1e-4)
    assert [s.truncated for s in scores] == [True, False]


# --- the cascade: every document to an early exit, the best on to the last layer -----------

EXIT, KEEP = 2, 3


def test_cascade_continues_exactly_the_k_best_to_the_full_model_score(
    mm_dir: Path, docs: list[str]
) -> None:
    cascade = MatryoshkaScorer(mm_dir, device="cpu", exit_layer=EXIT, keep=KEEP, batch_tokens=200)
    full = MatryoshkaScorer(mm_dir, device="cpu")
    early = MatryoshkaScorer(mm_dir, device="cpu", layer=EXIT)
    scores = cascade.score(QUERY, docs)
    full_values = [s.value for s in full.score(QUERY, docs)]
    exit_values = [s.value for s in early.score(QUERY, docs)]
    best = sorted(range(len(docs)), key=lambda i: -exit_values[i])[:KEEP]
    assert {i for i, s in enumerate(scores) if s.stage == 1} == set(best)
    for i, s in enumerate(scores):
        expected = full_values[i] if i in best else exit_values[i]
        assert s.value == pytest.approx(expected, abs=1e-5)
        assert s.stage == (1 if i in best else 0)
    ranked = [r.index for r in rank(scores)]
    assert ranked[:KEEP] == sorted(best, key=lambda i: -full_values[i])
    assert ranked[KEEP:] == sorted(set(range(len(docs))) - set(best), key=lambda i: -exit_values[i])


def test_cascade_never_recomputes_the_first_layers(mm_dir: Path, docs: list[str]) -> None:
    cascade = MatryoshkaScorer(mm_dir, device="cpu", exit_layer=EXIT, keep=KEEP)
    calls: list[tuple[int, int]] = []
    encode_exits = cascade.classifier.model.trunk.encode_exits

    def spy(batch: Any, exits: Any, **kw: Any) -> Any:
        calls.append((kw.get("start", 0), max(exits)))
        return encode_exits(batch, exits, **kw)

    cascade.classifier.model.trunk.encode_exits = spy  # type: ignore[method-assign]
    try:
        cascade.score(QUERY, docs)
    finally:
        del cascade.classifier.model.trunk.encode_exits
    # Every document runs layers 1..EXIT once; the kept ones resume at EXIT, up to 8.
    assert set(calls) == {(0, EXIT), (EXIT, 8)}


def test_cascade_with_chunks_continues_every_window_of_a_kept_document(mm_dir: Path) -> None:
    rng = random.Random(12)
    docs = [random_text(rng, n) for n in (60, 4, 45, 9)]
    options: dict[str, Any] = {"device": "cpu", "max_length": MAX_LENGTH, "overflow": "chunk"}
    cascade = MatryoshkaScorer(mm_dir, exit_layer=EXIT, keep=2, **options).score(QUERY, docs)
    full = MatryoshkaScorer(mm_dir, **options).score(QUERY, docs)
    early = MatryoshkaScorer(mm_dir, layer=EXIT, **options).score(QUERY, docs)
    best = sorted(range(len(docs)), key=lambda i: -early[i].value)[:2]
    for i, s in enumerate(cascade):
        expected = full[i] if i in best else early[i]
        assert s.value == pytest.approx(expected.value, abs=1e-5)
        assert s.chunks == expected.chunks


def test_raw_cascade_scores_are_logits(mm_dir: Path, docs: list[str]) -> None:
    cascade = MatryoshkaScorer(mm_dir, device="cpu", exit_layer=EXIT, keep=KEEP)
    pairs = cascade.encode_pairs(QUERY, docs)
    probabilities = cascade.score_pairs(pairs)
    logits = cascade.score_pairs(pairs, raw=True)
    assert {s.kind for s in logits} == {"logit"}
    for p, lg in zip(probabilities, logits, strict=True):
        assert p.stage == lg.stage
        assert p.value == pytest.approx(1 / (1 + math.exp(-lg.value)), abs=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"exit_layer": 2},
        {"keep": 3},
        {"exit_layer": 3, "keep": 3},  # not an exit of the grid
        {"exit_layer": 8, "keep": 3},  # not below layer
        {"exit_layer": 4, "keep": 3, "layer": 4},
        {"exit_layer": 2, "keep": 0},
    ],
)
def test_bad_cascades_are_refused(mm_dir: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        MatryoshkaScorer(mm_dir, device="cpu", **options)


class TestCascadingMatryoshkaScorer(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, mm_dir: Path) -> MatryoshkaScorer:
        return MatryoshkaScorer(mm_dir, device="cpu", exit_layer=EXIT, keep=KEEP)

    def test_one_score_per_document_in_input_order(
        self, scorer: MatryoshkaScorer, docs: list[str]
    ) -> None:
        # A document alone is always kept: it gets its full score. In a list, the kept
        # ones do too and the others keep their early exit's score.
        scores = scorer.score(QUERY, docs)
        assert len(scores) == len(docs) and sum(s.stage == 1 for s in scores) == KEEP
        early = MatryoshkaScorer(scorer.directory, device="cpu", layer=EXIT)
        for doc, s in zip(docs, scores, strict=True):
            alone = scorer.score(QUERY, [doc])[0] if s.stage == 1 else early.score(QUERY, [doc])[0]
            assert s.value == pytest.approx(alone.value, abs=self.tolerance)
