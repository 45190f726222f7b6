"""Scorers on the same checkpoint share one loaded copy; it goes with its last user."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from rerank_plugins import ColBERTScorer, CrossEncoderScorer, load_scorer
from rerank_plugins.testing import make_colbert_checkpoint

DOCS = ["w1 w2 w3", "w9 w8", "w1 w50 w51 w52", "w200"]


def test_two_scorers_on_one_checkpoint_share_the_weights(modernbert_dir: Path) -> None:
    a = CrossEncoderScorer(modernbert_dir, device="cpu")
    b = load_scorer(str(modernbert_dir), device="cpu", max_length=64)
    assert b.classifier is a.classifier  # type: ignore[attr-defined]
    assert [s.value for s in a.score("w1", DOCS)] == [
        s.value
        for s in CrossEncoderScorer(modernbert_dir, device="cpu", cache=False).score("w1", DOCS)
    ]


def test_cache_false_and_another_dtype_get_their_own_copy(modernbert_dir: Path) -> None:
    a = CrossEncoderScorer(modernbert_dir, device="cpu")
    private = CrossEncoderScorer(modernbert_dir, device="cpu", cache=False)
    bf16 = CrossEncoderScorer(modernbert_dir, device="cpu", dtype="bfloat16")
    other_engine = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers")
    ids = {id(s.classifier) for s in (a, private, bf16, other_engine)}
    assert len(ids) == 4


def test_weights_are_freed_when_the_last_user_goes(modernbert_dir: Path) -> None:
    a = CrossEncoderScorer(modernbert_dir, device="cpu")
    b = CrossEncoderScorer(modernbert_dir, device="cpu")
    weights = weakref.ref(a.classifier)
    del a
    gc.collect()
    assert weights() is not None  # b still uses them
    del b
    gc.collect()
    assert weights() is None
    fresh = CrossEncoderScorer(modernbert_dir, device="cpu")
    assert fresh.classifier is not None


def test_a_checkpoint_rewritten_in_place_is_loaded_again(tmp_path: Path) -> None:
    from rerank_plugins.testing import make_modernbert_checkpoint

    directory = make_modernbert_checkpoint(tmp_path / "ckpt", seed=1)
    first = CrossEncoderScorer(directory, device="cpu")
    before = [s.value for s in first.score("w1", DOCS)]
    make_modernbert_checkpoint(directory, seed=2)
    second = CrossEncoderScorer(directory, device="cpu")
    assert second.classifier is not first.classifier
    assert [s.value for s in second.score("w1", DOCS)] != before


def test_adapters_on_the_same_model_share_the_weights(modernbert_dir: Path) -> None:
    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    options = {"device": "cpu"}
    first = RerankCompressor(model=str(modernbert_dir), model_kwargs=options)
    second = RerankCompressor(model=str(modernbert_dir), model_kwargs=options)
    third = RerankPostprocessor(model=str(modernbert_dir), model_kwargs=options)
    assert first.scorer is not second.scorer
    assert first.scorer.classifier is second.scorer.classifier is third.scorer.classifier


def test_colbert_scorers_share_trunk_and_projection(tmp_path: Path) -> None:
    directory = make_colbert_checkpoint(tmp_path / "colbert")
    a = ColBERTScorer(directory, device="cpu")
    b = ColBERTScorer(directory, device="cpu", cache=0)  # no vector cache, weights shared
    c = ColBERTScorer(directory, device="cpu", cache=False)  # nothing cached at all
    assert a.trunk is b.trunk and a.projection is b.projection
    assert c.trunk is not a.trunk
    assert [s.value for s in a.score("w1", DOCS)] == [s.value for s in c.score("w1", DOCS)]
