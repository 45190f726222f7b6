"""ColBERT under hostile input: a cut query is flagged, and the document cache's keys do
not hold document text (its memory is bounded by its size, not by what was cached)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rerank_plugins.local.colbert import ColBERTScorer, DocumentVectorCache
from rerank_plugins.testing import make_colbert_checkpoint


def words(n: int) -> str:
    return " ".join(f"w{i % 300}" for i in range(n))


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colbert_checkpoint(tmp_path_factory.mktemp("colbert") / "tiny-colbert")


def test_a_cut_query_flags_every_score_as_truncated(colbert_dir: Path) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu")
    long_query = words(200)
    scores = scorer.score(long_query, ["w1 w2", "w3"])
    assert [s.truncated for s in scores] == [True, True]
    assert [s.truncated for s in scorer.score("w1", ["w1 w2", "w3"])] == [False, False]


def test_cache_keys_are_fixed_size_digests_not_document_text(colbert_dir: Path) -> None:
    cache = DocumentVectorCache(1 << 20)
    scorer = ColBERTScorer(colbert_dir, device="cpu", vector_cache=cache, document_length=16)
    documents = [words(5) + " " + "x" * 200_000 + str(i) for i in range(8)]  # 1.6 MB of text
    scorer.score("w1", documents)
    assert len(cache) == 8
    held = sum(sys.getsizeof(part) for key in cache._entries for part in key)
    assert held < 8 * 1000  # keys hold no document text (8 x 200 KB before)
    # The digest still tells documents apart: a second pass is all hits, same scores.
    again = scorer.score("w1", documents)
    assert cache.hits == 8 and len(again) == 8
