"""Native GTE "new" (gte-multilingual-reranker-base layout): parity, contract, loading, policy.

The reference is transformers' own ``GteForSequenceClassification`` (eager attention, fp32,
one pair at a time, its own XLM-R tokenizer class) loaded from the *same* safetensors: its
conversion mapping reads the ``new.``-prefixed names, and the NTK RoPE of the "new" code is
expressed exactly as transformers' "linear" RoPE with ``theta' = theta * f`` and
``factor' = f ** (2 / head_dim)`` (its native config rejects ``{"type": "ntk"}``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from rerank_plugins import InputTooLongError, Score, UnsupportedModelError, load_scorer
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine.gte import GteNewConfig, GteNewPairClassifier, gte_new_inv_freq
from rerank_plugins.testing import (
    make_gte_new_checkpoint,
    make_gte_reference_checkpoint,
    random_text,
)
from tests.contract import QUERY, PairScorerContract


@pytest.fixture(scope="module")
def gte_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 post-norm layers, hidden 32, 4 heads, NTK RoPE (theta 20000, factor 8)."""
    return make_gte_new_checkpoint(tmp_path_factory.mktemp("ckpt") / "gte-new")


def reference_logits(
    directory: Path, query: str, docs: list[str], *, max_length: int | None = None
) -> list[float]:
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = transformers.GteForSequenceClassification.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    ).eval()
    out = []
    with torch.inference_mode():
        for doc in docs:
            cut = {"truncation": "only_second", "max_length": max_length} if max_length else {}
            enc = tok(query, doc, return_tensors="pt", **cut)
            out.append(float(model(**enc).logits[0, 0]))
    return out


def order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=values.__getitem__)


class TestGteNewCrossEncoder(PairScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, gte_dir: Path) -> CrossEncoderScorer:
        # A small budget so that the contract's documents split over several batches.
        return CrossEncoderScorer(gte_dir, device="cpu", batch_tokens=256)


@pytest.mark.parametrize("max_length", [None, 48])
def test_logits_match_transformers_gte_reference(
    gte_dir: Path, tmp_path: Path, docs: list[str], max_length: int | None
) -> None:
    scorer = CrossEncoderScorer(
        gte_dir, device="cpu", output="logit", batch_tokens=512, max_length=max_length
    )
    assert isinstance(scorer.classifier, GteNewPairClassifier)
    ours = [s.value for s in scorer.score(QUERY, docs)]
    ref = reference_logits(
        make_gte_reference_checkpoint(gte_dir, tmp_path / "ref"), QUERY, docs, max_length=max_length
    )
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1e-4
    assert order(ours) == order(ref)
    assert max(ours) - min(ours) > 0.1  # the check is not vacuous


def test_ntk_frequencies_follow_the_published_formula() -> None:
    config = GteNewConfig.from_dict(
        {
            "model_type": "new",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "rope_theta": 20000,
            "rope_scaling": {"type": "ntk", "factor": 8.0},
        }
    )
    d, theta, f = 16, 20000.0, 8.0
    expected = [(theta * f) ** (-2 * i / d) / f ** (2 / d) for i in range(d // 2)]
    assert gte_new_inv_freq(config).tolist() == pytest.approx(expected, rel=1e-6)


def test_ntk_is_off_without_a_factor_above_one() -> None:
    base = {"model_type": "new", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 500}
    plain = gte_new_inv_freq(GteNewConfig.from_dict(base))
    unit = gte_new_inv_freq(
        GteNewConfig.from_dict({**base, "rope_scaling": {"type": "ntk", "factor": 1.0}})
    )
    assert plain.tolist() == pytest.approx([500.0 ** (-2 * i / 16) for i in range(8)], rel=1e-6)
    assert torch.equal(plain, unit)


def test_mixed_ntk_frequencies() -> None:
    config = GteNewConfig.from_dict(
        {
            "model_type": "new",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "rope_theta": 500,
            "rope_scaling": {"type": "ntk", "factor": 4.0, "mixed_b": 0.75},
        }
    )
    d, a = 16, math.log(4.0) / 8**0.75
    expected = [500.0 ** (-2 * i / d) / math.exp(a * (i + 1) ** 0.75) for i in range(d // 2)]
    assert gte_new_inv_freq(config).tolist() == pytest.approx(expected, rel=1e-6)


def test_load_scorer_picks_the_native_engine_from_the_files(gte_dir: Path) -> None:
    scorer = load_scorer(str(gte_dir), device="cpu")
    assert isinstance(scorer, CrossEncoderScorer)
    assert isinstance(scorer.classifier, GteNewPairClassifier)
    assert scorer.max_length == 8192


def test_transformers_engine_refuses_instead_of_running_remote_code(gte_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError):
        CrossEncoderScorer(gte_dir, device="cpu", engine="transformers")


def test_pair_template_is_xlmr(gte_dir: Path) -> None:
    scorer = CrossEncoderScorer(gte_dir, device="cpu")
    (pair,) = scorer.encoder.encode("w1 w2", ["w3 w4 w5"])
    # <s>=0, </s>=2, word wN has id N + 4
    assert pair.ids == [0, 5, 6, 2, 2, 7, 8, 9, 2]
    assert pair.type_ids == [0] * 9
    assert scorer.score("w1 w2", ["w3 w4 w5"])[0].tokens == 9


def test_unprefixed_and_unpacked_checkpoints_score_the_same(
    gte_dir: Path, tmp_path: Path, docs: list[str]
) -> None:
    state = load_file(str(gte_dir / "model.safetensors"))
    bare: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key.removeprefix("new.")
        if name.endswith(("qkv_proj.weight", "qkv_proj.bias")):
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                bare[name.replace("qkv_proj", f"{part}_proj")] = chunk.contiguous()
        else:
            bare[name] = tensor
    other = tmp_path / "bare"
    shutil.copytree(gte_dir, other)
    save_file(bare, str(other / "model.safetensors"))
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "pack_qkv": False}))
    a = CrossEncoderScorer(gte_dir, device="cpu", output="logit").score(QUERY, docs)
    b = CrossEncoderScorer(other, device="cpu", output="logit").score(QUERY, docs)
    assert [s.value for s in a] == pytest.approx([s.value for s in b], abs=1e-6)


def test_missing_tensors_are_named(gte_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "broken"
    shutil.copytree(gte_dir, other)
    state = load_file(str(other / "model.safetensors"))
    del state["new.pooler.dense.weight"]
    save_file(state, str(other / "model.safetensors"))
    with pytest.raises(UnsupportedModelError, match=r"pooler\.dense\.weight"):
        CrossEncoderScorer(other, device="cpu")


@pytest.mark.parametrize(
    "change",
    [
        {"position_embedding_type": "absolute"},
        {"layer_norm_type": "rms_norm"},
        {"logn_attention_scale": True},
        {"rope_scaling": {"type": "yarn", "factor": 2.0}},
    ],
)
def test_unsupported_variants_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(UnsupportedModelError):
        GteNewConfig.from_dict({"model_type": "new", **change})


def test_over_window_document_is_truncated_keeping_the_query(
    gte_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    long_doc = random_text(random.Random(5), 100)
    scorer = CrossEncoderScorer(gte_dir, device="cpu", max_length=32)
    with caplog.at_level(logging.WARNING):
        first = scorer.score(QUERY, [long_doc, "w7"])
    assert first[0] == Score(first[0].value, "probability", tokens=32, truncated=True)
    assert first[1].truncated is False and first[1].tokens == 4 + 1 + 4
    assert sum("truncated" in r.message for r in caplog.records) == 1
    # <s> q </s></s> d </s>: 4 specials, the query whole, the document cut to fit.
    words = long_doc.split()[: 32 - 4 - 4]
    assert scorer.score(QUERY, [" ".join(words)])[0].value == pytest.approx(first[0].value)


def test_overflow_error_names_the_documents(gte_dir: Path) -> None:
    rng = random.Random(6)
    scorer = CrossEncoderScorer(gte_dir, device="cpu", max_length=32, overflow="error")
    with pytest.raises(InputTooLongError) as info:
        scorer.score(QUERY, ["w1", random_text(rng, 60), "w2", random_text(rng, 40)])
    assert info.value.indices == (1, 3)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_backend_matches_sdpa(gte_dir: Path, docs: list[str]) -> None:
    cpu = torch.device("cpu")
    sdpa = GteNewPairClassifier.from_checkpoint(
        gte_dir, device=cpu, dtype=torch.float32, backend="sdpa"
    )
    flex = GteNewPairClassifier.from_checkpoint(
        gte_dir, device=cpu, dtype=torch.float32, backend="flex"
    )
    pairs = CrossEncoderScorer(gte_dir, device="cpu").encoder.encode(QUERY, docs)
    assert torch.allclose(sdpa.logits(pairs), flex.logits(pairs), atol=1e-5)


def test_bf16_trunk_keeps_head_and_rope_in_fp32(gte_dir: Path, docs: list[str]) -> None:
    fp32 = CrossEncoderScorer(gte_dir, device="cpu", output="logit")
    bf16 = CrossEncoderScorer(gte_dir, device="cpu", dtype="bf16", output="logit")
    assert isinstance(bf16.classifier, GteNewPairClassifier)
    model = bf16.classifier.model
    assert model.new.encoder.layer[0].attention.qkv_proj.weight.dtype == torch.bfloat16
    assert model.classifier.weight.dtype == model.inv_freq.dtype == torch.float32
    a = [s.value for s in fp32.score(QUERY, docs)]
    b = [s.value for s in bf16.score(QUERY, docs)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.1
