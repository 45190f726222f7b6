"""Attention backend choice by feature detection: every branch, with the feature set faked.

The GPU machine runs another torch (2.11) than CI (2.13), and users run others still; the
engine must pick what the installed torch and GPU offer, never assume it from a version.
"""

from __future__ import annotations

import pytest
import torch

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.engine import attention as attn
from rerank_plugins.local.engine.attention import AttentionFeatures, Backends, choose_backends
from rerank_plugins.testing.fake_device import fake_device

pytestmark = pytest.mark.cuda_trace

CUDA = torch.device("cuda", 0)
BF16 = torch.bfloat16


def features(
    *,
    varlen: bool = True,
    window: bool = True,
    flex: bool = True,
    capability: tuple[int, int] | None = (9, 0),
) -> AttentionFeatures:
    return AttentionFeatures(
        varlen=varlen, varlen_window=varlen and window, flex=flex, capability=capability
    )


def test_varlen_with_windows_runs_every_layer() -> None:
    assert choose_backends(CUDA, dtype=BF16, features=features()) == Backends("varlen", "varlen")


def test_varlen_without_windows_runs_global_layers_and_flex_runs_local_ones() -> None:
    chosen = choose_backends(CUDA, dtype=BF16, features=features(window=False))
    assert chosen == Backends("varlen", "flex")
    assert chosen.for_window(None) == "varlen" and chosen.for_window(64) == "flex"


def test_varlen_without_windows_or_flex_falls_back_to_blocked_sdpa_on_local_layers() -> None:
    chosen = choose_backends(CUDA, dtype=BF16, features=features(window=False, flex=False))
    assert chosen == Backends("varlen", "sdpa")


def test_no_varlen_means_flex() -> None:
    assert choose_backends(CUDA, dtype=BF16, features=features(varlen=False)) == Backends(
        "flex", "flex"
    )


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_pre_ampere_gpus_get_flex(capability: tuple[int, int]) -> None:
    chosen = choose_backends(CUDA, dtype=BF16, features=features(capability=capability))
    assert chosen == Backends("flex", "flex")


def test_gpus_without_triton_or_a_torch_without_flex_get_bucketed_sdpa() -> None:
    assert choose_backends(CUDA, features=features(capability=(6, 1))) == Backends("sdpa", "sdpa")
    assert choose_backends(CUDA, features=features(varlen=False, flex=False)) == Backends(
        "sdpa", "sdpa"
    )


def test_fp32_weights_skip_flash_attention() -> None:
    chosen = choose_backends(CUDA, dtype=torch.float32, features=features())
    assert chosen == Backends("flex", "flex")


def test_forcing_varlen_keeps_the_local_fallback_and_checks_the_hardware() -> None:
    chosen = choose_backends(CUDA, "varlen", dtype=BF16, features=features(window=False))
    assert chosen == Backends("varlen", "flex")
    with pytest.raises(InvalidInputError, match=r"8\.0"):
        choose_backends(CUDA, "varlen", dtype=BF16, features=features(capability=(7, 5)))
    with pytest.raises(InvalidInputError, match="FlexAttention"):
        choose_backends(CUDA, "flex", features=features(flex=False))


def test_cpu_always_gets_sdpa() -> None:
    cpu = torch.device("cpu")
    assert choose_backends(cpu, features=features(capability=None)) == Backends("sdpa", "sdpa")


def test_detection_reads_the_installed_torch_and_the_patched_gpu() -> None:
    with fake_device("cuda", capability=(8, 6)):
        found = AttentionFeatures.detect(CUDA)
    assert found.capability == (8, 6)
    assert found.varlen == attn.has_varlen() and found.flex == attn.has_flex()
    # torch 2.13 (CI) has varlen_attn with window_size; 2.10 had is_causal instead.
    if found.varlen:
        assert found.varlen_window == ("window_size" in attn._varlen_parameters())  # type: ignore[operator]
    assert AttentionFeatures.detect(torch.device("cpu")).capability is None


def test_varlen_without_a_window_parameter_refuses_a_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A torch 2.10-style signature: asking it for a window must fail loudly, not run global.
    monkeypatch.setattr(attn, "_varlen_parameters", lambda: frozenset({"is_causal"}))
    batch = attn.pack_sequences([[1] * 5], torch.device("cpu"))
    q = torch.zeros(5, 1, 4)
    with pytest.raises(InvalidInputError, match="window_size"):
        attn.attention(q, q, q, batch, window=1, backend="varlen")
