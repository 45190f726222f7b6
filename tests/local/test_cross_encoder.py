"""The local cross-encoder scorer on the transformers path: parity, contract, overflow."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
import transformers

from rerank_plugins import InputTooLongError, Score, load_scorer
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import random_text
from tests.contract import QUERY, PairScorerContract


def reference_logits(directory: Path, query: str, docs: list[str]) -> list[float]:
    """transformers' own classes, eager attention, fp32, one pair at a time (no padding)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    ).eval()
    out = []
    with torch.inference_mode():
        for doc in docs:
            enc = tok(query, doc, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


class TestTransformersCrossEncoder(PairScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, modernbert_dir: Path) -> CrossEncoderScorer:
        return CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers")


def test_logits_match_transformers_eager_reference(modernbert_dir: Path, docs: list[str]) -> None:
    scorer = CrossEncoderScorer(
        modernbert_dir, device="cpu", engine="transformers", output="logit", batch_tokens=512
    )
    ours = [s.value for s in scorer.score(QUERY, docs)]
    ref = reference_logits(modernbert_dir, QUERY, docs)
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1e-4
    assert sorted(range(len(ours)), key=ours.__getitem__) == sorted(
        range(len(ref)), key=ref.__getitem__
    )


def test_probability_is_sigmoid_of_logit(modernbert_dir: Path, docs: list[str]) -> None:
    prob = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers")
    logit = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers", output="logit")
    for p, lg in zip(prob.score(QUERY, docs), logit.score(QUERY, docs), strict=True):
        assert p.kind == "probability" and lg.kind == "logit"
        assert p.value == pytest.approx(float(torch.sigmoid(torch.tensor(lg.value))), abs=1e-6)


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_batch_budget_does_not_change_scores(modernbert_dir: Path, docs: list[str]) -> None:
    big = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers")
    small = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers", batch_tokens=1)
    assert [s.value for s in big.score(QUERY, docs)] == pytest.approx(
        [s.value for s in small.score(QUERY, docs)], abs=1e-5
    )


def test_max_length_defaults_to_the_model_window(modernbert_dir: Path) -> None:
    scorer = load_scorer(str(modernbert_dir), device="cpu")
    assert isinstance(scorer, CrossEncoderScorer)
    assert scorer.max_length == 8192


def test_max_length_beyond_the_window_is_clamped(modernbert_dir: Path) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", max_length=100_000)
    assert scorer.max_length == 8192


def test_over_window_document_is_truncated_and_flagged_once(
    modernbert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5)
    long_doc = random_text(rng, 100)
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", max_length=32)
    with caplog.at_level(logging.WARNING):
        first = scorer.score(QUERY, [long_doc, "w7"])
        scorer.score(QUERY, [long_doc])
    assert first[0] == Score(first[0].value, "probability", tokens=32, truncated=True)
    assert first[1].truncated is False and first[1].tokens == 4 + 1 + 3
    assert sum("truncated" in r.message for r in caplog.records) == 1
    # The query is kept whole: the cut document equals the document cut by hand.
    words = long_doc.split()[: 32 - 3 - 4]
    assert scorer.score(QUERY, [" ".join(words)])[0].value == pytest.approx(first[0].value)


def test_overflow_error_names_the_documents(modernbert_dir: Path) -> None:
    rng = random.Random(6)
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", max_length=32, overflow="error")
    with pytest.raises(InputTooLongError) as info:
        scorer.score(QUERY, ["w1", random_text(rng, 60), "w2", random_text(rng, 40)])
    assert info.value.indices == (1, 3)


def test_query_longer_than_the_window_raises(modernbert_dir: Path) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", max_length=16)
    with pytest.raises(InputTooLongError, match="query"):
        scorer.score(random_text(random.Random(7), 20), ["w1"])


def test_window_comes_from_the_model_not_the_tokenizer_config(
    modernbert_dir: Path, tmp_path: Path
) -> None:
    # Tokenizer configs often inherit a 512 model_max_length; the model has 8192 positions.
    import json
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(modernbert_dir, copy)
    tok_config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**tok_config, "model_max_length": 512}))
    assert CrossEncoderScorer(copy, device="cpu").max_length == 8192
