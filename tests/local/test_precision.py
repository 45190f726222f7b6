"""CPU precision modes (bf16, int8), their hardware checks, the CPU token budget and the
Apple MPS device choice (no Mac here; see test_mps_defaults_to_fp32_sdpa_and_accepts_fp16)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

from rerank_plugins.errors import InvalidInputError, UnsupportedDeviceError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine import device as device_mod
from rerank_plugins.local.engine import precision
from rerank_plugins.local.engine.attention import choose_backend
from rerank_plugins.local.engine.device import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    default_batch_tokens,
    pick_device,
    pick_dtype,
)
from rerank_plugins.local.engine.precision import (
    BF16_FEATURES,
    INT8_FEATURES,
    Int8DynamicLinear,
    check_mode,
    cpu_features,
)
from rerank_plugins.testing import make_gte_new_checkpoint, make_modernbert_checkpoint, random_text
from tests.contract import QUERY

CPU = torch.device("cpu")
has_bf16 = pytest.mark.skipif(
    not cpu_features() & BF16_FEATURES, reason="this CPU has no native bf16"
)
has_int8 = pytest.mark.skipif(
    not cpu_features() & INT8_FEATURES, reason="this CPU has no int8 dot products"
)

# Fidelity bounds the benchmark also reports (benchmarks/RESULTS.md, "CPU modes").
MAX_DELTA_PROB = 2e-2
MIN_KENDALL_TAU = 0.95  # 40 documents here (the benchmark's bound, 0.99, is over 100)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two score lists (ties count as neither concordant nor not)."""
    n = len(a)
    s = sum(
        (1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
        for i in range(n)
        for j in range(i + 1, n)
    )
    return s / (n * (n - 1) / 2)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = {
        "num_hidden_layers": 4,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 2,
        "global_attn_every_n_layers": 2,
        "local_attention": 16,
        "classifier_pooling": "mean",
        "initializer_range": 0.05,
    }
    return make_modernbert_checkpoint(tmp_path_factory.mktemp("modes") / "m", config=config)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    rng = random.Random(7)
    return [random_text(rng, rng.randint(5, 200)) for _ in range(40)]


def probabilities(directory: Path, dtype: str, docs: list[str]) -> list[float]:
    scorer = CrossEncoderScorer(directory, device="cpu", dtype=dtype)
    return [s.value for s in scorer.score(QUERY, docs)]


@pytest.fixture(scope="module")
def fp32_probs(ckpt: Path, docs: list[str]) -> list[float]:
    return probabilities(ckpt, "float32", docs)


def assert_faithful(got: list[float], want: list[float], tau: float = MIN_KENDALL_TAU) -> None:
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= MAX_DELTA_PROB
    assert kendall_tau(got, want) >= tau
    # the scores really differ between documents, so the tau above means something
    assert max(want) - min(want) > 5 * MAX_DELTA_PROB


@has_bf16
def test_bf16_mode_stays_within_fidelity_bounds_of_fp32(
    ckpt: Path, docs: list[str], fp32_probs: list[float]
) -> None:
    assert_faithful(probabilities(ckpt, "bfloat16", docs), fp32_probs)


@has_int8
def test_int8_mode_stays_within_fidelity_bounds_of_fp32(
    ckpt: Path, docs: list[str], fp32_probs: list[float]
) -> None:
    got = probabilities(ckpt, "int8", docs)
    assert got != fp32_probs  # the quantized path really ran
    assert_faithful(got, fp32_probs)


@has_int8
def test_int8_mode_keeps_the_benchmark_tau_over_100_well_spread_documents(ckpt: Path) -> None:
    # The bound (Kendall tau >= 0.99 over 100 documents, max |dp| <= 2e-2), on
    # probabilities spread over more than 0.5 (assert_faithful checks the spread).
    rng = random.Random(7)
    docs = [random_text(rng, rng.randint(5, 200)) for _ in range(100)]
    want = probabilities(ckpt, "float32", docs)
    assert max(want) - min(want) > 0.5
    assert_faithful(probabilities(ckpt, "int8", docs), want, tau=0.99)


@has_int8
def test_int8_mode_on_gte_new_stays_within_fidelity_bounds(tmp_path: Path, docs: list[str]) -> None:
    directory = make_gte_new_checkpoint(tmp_path / "gte")
    # The tiny GTE test config (hidden 32) puts many documents within 1e-3 of each other:
    # a looser tau than ModernBERT's, the same probability bound.
    got, want = probabilities(directory, "int8", docs), probabilities(directory, "fp32", docs)
    assert_faithful(got, want, tau=0.9)


@has_int8
def test_int8_quantizes_the_trunk_linears_and_keeps_heads_fp32(ckpt: Path) -> None:
    scorer = CrossEncoderScorer(ckpt, device="cpu", dtype="int8")
    model = scorer.classifier.model  # type: ignore[attr-defined]
    layer = model.trunk.layers[1]
    for linear in (layer.attn.Wqkv, layer.attn.Wo, layer.mlp.Wi, layer.mlp.Wo):
        assert isinstance(linear, Int8DynamicLinear)
        assert linear.weight_t.dtype == torch.int8
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.weight.dtype == torch.float32
    assert model.head.dense.weight.dtype == torch.float32
    assert model.trunk.final_norm.weight.dtype == torch.float32


def test_int8_linear_error_is_within_rounding_per_token() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True)
    x = torch.randn(30, 64)
    x[3] *= 1000.0  # an outlier token must not coarsen the quantization of the others
    want = linear(x)
    got = Int8DynamicLinear(linear)(x)
    err = (got - want).abs()
    # Each operand is off by at most half a step (amax / 254) of its row: over 64 products
    # the output is off by at most 64 * amax_x * amax_w * (2 / 254 + 1 / 254**2).
    amax = x.abs().amax(1, keepdim=True) * linear.weight.abs().amax(1)[None, :]
    bound = 64 * amax * (2 / 254 + 1 / 254**2)
    assert bool((err <= bound + 1e-6).all())
    others = torch.cat([err[:3], err[4:]])
    assert float(others.max()) < 0.05


def test_int8_linear_keeps_leading_shape() -> None:
    linear = nn.Linear(8, 4, bias=False)
    assert Int8DynamicLinear(linear)(torch.randn(2, 3, 8)).shape == (2, 3, 4)


# --- refusal on CPUs without the features (flags faked) -------------------------------


@pytest.fixture
def no_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset())


def test_bf16_is_refused_on_a_cpu_without_native_bf16(no_fast_paths: None, ckpt: Path) -> None:
    with pytest.raises(UnsupportedDeviceError, match="avx512_bf16") as info:
        CrossEncoderScorer(ckpt, device="cpu", dtype="bfloat16")
    assert "float32" in str(info.value)
    with pytest.raises(UnsupportedDeviceError):
        pick_dtype(torch.bfloat16, CPU)


def test_int8_is_refused_on_a_cpu_without_int8_dot_products(
    no_fast_paths: None, ckpt: Path
) -> None:
    with pytest.raises(UnsupportedDeviceError, match="avx512_vnni"):
        CrossEncoderScorer(ckpt, device="cpu", dtype="int8")


def test_fp32_needs_no_feature(no_fast_paths: None, ckpt: Path) -> None:
    assert CrossEncoderScorer(ckpt, device="cpu", dtype="float32").dtype == torch.float32


def test_each_mode_needs_only_its_own_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset({"avx512_vnni"}))
    check_mode(CPU, torch.float32, quantize="int8")
    with pytest.raises(UnsupportedDeviceError):
        check_mode(CPU, torch.bfloat16, quantize=None)
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset({"amx_bf16"}))
    check_mode(CPU, torch.bfloat16, quantize=None)
    with pytest.raises(UnsupportedDeviceError):
        check_mode(CPU, torch.float32, quantize="int8")


def test_bf16_off_the_cpu_is_not_checked_against_cpu_flags(no_fast_paths: None) -> None:
    check_mode(torch.device("cuda"), torch.bfloat16, quantize=None)


def test_int8_is_cpu_only_and_native_only(ckpt: Path) -> None:
    with pytest.raises(UnsupportedDeviceError, match="CPU only"):
        check_mode(torch.device("mps"), torch.float32, quantize="int8")
    with pytest.raises(InvalidInputError, match="native engines"):
        CrossEncoderScorer(ckpt, device="cpu", dtype="int8", engine="transformers")


def test_cpu_features_are_the_ones_the_modes_ask_for() -> None:
    assert cpu_features() <= BF16_FEATURES | INT8_FEATURES


# --- token budget ---------------------------------------------------------------------


def test_default_token_budget_is_smaller_on_cpu_than_on_gpu(ckpt: Path) -> None:
    assert CrossEncoderScorer(ckpt, device="cpu").batch_tokens == CPU_BATCH_TOKENS == 2048
    assert default_batch_tokens(torch.device("cuda")) == GPU_BATCH_TOKENS == 16384
    assert CrossEncoderScorer(ckpt, device="cpu", batch_tokens=999).batch_tokens == 999
    with pytest.raises(InvalidInputError):
        CrossEncoderScorer(ckpt, device="cpu", batch_tokens=0)


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_scores_do_not_depend_on_the_token_budget(ckpt: Path, docs: list[str]) -> None:
    small = CrossEncoderScorer(ckpt, device="cpu", batch_tokens=300)
    large = CrossEncoderScorer(ckpt, device="cpu", batch_tokens=100_000)
    a = [s.value for s in small.score(QUERY, docs)]
    b = [s.value for s in large.score(QUERY, docs)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5


# --- Apple MPS ------------------------------------------------------------------------


def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_mod, "mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert pick_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto").type == "mps"
    assert pick_device(None).type == "mps"
    monkeypatch.setattr(device_mod, "mps_available", lambda: False)
    assert pick_device("auto").type == "cpu"
    with pytest.raises(InvalidInputError, match="MPS is not available"):
        pick_device("mps")


def test_mps_defaults_to_fp32_sdpa_and_accepts_fp16() -> None:
    # Not traced under FakeTensorMode: on the CPU-only torch 2.13 fake "mps" tensors
    # lack kernels for SDPA's backend choice, RoPE's copies and LayerNorm (the last one
    # aborts the process), so only the device, dtype and backend choice are checked here.
    mps = torch.device("mps")
    assert pick_dtype("auto", mps) == torch.float32
    assert pick_dtype("float16", mps) == torch.float16
    assert choose_backend(mps) == "sdpa"
    with pytest.raises(InvalidInputError):
        choose_backend(mps, "varlen")


@has_int8
def test_int8_is_refused_by_scorers_without_an_int8_engine(tmp_path: Path) -> None:
    from rerank_plugins.local.matryoshka import MatryoshkaScorer
    from rerank_plugins.testing import make_matryoshka_checkpoint

    directory = make_matryoshka_checkpoint(tmp_path / "mm")
    with pytest.raises(InvalidInputError, match="not for MatryoshkaScorer"):
        MatryoshkaScorer(directory, device="cpu", dtype="int8")


@has_int8
def test_int8_and_float32_scorers_never_share_loaded_weights(tmp_path: Path) -> None:
    # int8 rewrites the loaded model's linear layers in place: sharing would corrupt fp32.
    directory = make_modernbert_checkpoint(tmp_path / "ckpt")
    fp32 = CrossEncoderScorer(directory, device="cpu", dtype="float32")
    int8 = CrossEncoderScorer(directory, device="cpu", dtype="int8")
    assert fp32.classifier is not int8.classifier
    again = CrossEncoderScorer(directory, device="cpu", dtype="float32")
    assert again.classifier is fp32.classifier
