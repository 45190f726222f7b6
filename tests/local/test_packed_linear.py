"""oneDNN-prepacked linear layers: the CPU fp32/bf16 trunk's GEMMs (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine.precision import (
    Int8DynamicLinear,
    PackedLinear,
    has_packed_linear,
    prepack_linears,
    prepare_cpu_linears,
)
from rerank_plugins.testing import make_modernbert_checkpoint

pytestmark = pytest.mark.skipif(not has_packed_linear(), reason="torch without oneDNN")
CPU = torch.device("cpu")


@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_is_the_same_fp32_product(bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=bias)
    x = torch.randn(3, 17, 96)
    want = linear(x)
    packed = PackedLinear(linear)
    got = packed(x)
    assert got.shape == want.shape == (3, 17, 40)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    residual = torch.randn(17, 40)
    torch.testing.assert_close(
        packed.add_to(residual, x[0]), residual + want[0], rtol=1e-5, atol=1e-5
    )


def test_packed_linear_keeps_bf16() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).bfloat16()
    x = torch.randn(9, 64).bfloat16()
    got = PackedLinear(linear)(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), linear(x).float(), rtol=2e-2, atol=2e-2)


def test_prepack_replaces_every_linear_and_nothing_else() -> None:
    inner = nn.Sequential(nn.Linear(8, 4))
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), inner)
    assert prepack_linears(model) == 2
    assert isinstance(model[0], PackedLinear) and isinstance(inner[0], PackedLinear)
    assert isinstance(model[1], nn.LayerNorm)


def test_int8_mode_quantizes_instead_of_prepacking() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    assert prepare_cpu_linears(model, device=CPU, quantize="int8") == 1
    assert isinstance(model[0], Int8DynamicLinear)


def test_off_the_cpu_nothing_is_prepacked() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    assert prepare_cpu_linears(model, device=torch.device("meta"), quantize=None) == 0
    assert isinstance(model[0], nn.Linear)


def test_native_cpu_scorer_runs_its_trunk_on_packed_linears(tmp_path: Path) -> None:
    config = {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 2,
        "classifier_pooling": "mean",
    }
    directory = make_modernbert_checkpoint(tmp_path / "m", config=config)
    scorer = CrossEncoderScorer(directory, device="cpu", dtype="float32", engine="native")
    model = scorer.classifier.model  # type: ignore[attr-defined]
    kinds = {
        type(m) for m in model.trunk.layers.modules() if isinstance(m, (nn.Linear, PackedLinear))
    }
    assert kinds == {PackedLinear}
    assert isinstance(model.classifier, nn.Linear)  # heads stay plain fp32
