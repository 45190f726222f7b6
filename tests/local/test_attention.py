"""Packed attention and RoPE: every backend that runs here against a dense reference."""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.engine import attention as attn
from rerank_plugins.local.engine.attention import (
    PackedBatch,
    attention,
    choose_backend,
    pack_sequences,
)
from rerank_plugins.local.engine.rope import (
    apply_rotary,
    default_inv_freq,
    ntk_inv_freq,
    rotary_cos_sin,
)

CPU = torch.device("cpu")


def dense_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, window: int | None
) -> torch.Tensor:
    """Per-sequence softmax(q k^T / sqrt(d)) v with an explicit band mask."""
    out = torch.empty_like(q)
    cu = batch.cu_seqlens.tolist()
    for s, e in itertools.pairwise(cu):
        scores = q[s:e].transpose(0, 1) @ k[s:e].transpose(0, 1).transpose(-1, -2)
        scores = scores * q.shape[-1] ** -0.5
        if window is not None:
            i = torch.arange(e - s)
            scores = scores.masked_fill((i[:, None] - i[None, :]).abs() > window, float("-inf"))
        out[s:e] = (scores.softmax(-1) @ v[s:e].transpose(0, 1)).transpose(0, 1)
    return out


def random_batch(seed: int, max_len: int = 200) -> PackedBatch:
    rng = random.Random(seed)
    lengths = [rng.randint(1, max_len) for _ in range(rng.randint(1, 7))]
    return pack_sequences([[1] * n for n in lengths], CPU)


def test_pack_sequences_restarts_positions() -> None:
    batch = pack_sequences([[7, 8, 9], [4], [5, 6]], CPU)
    assert batch.input_ids.tolist() == [7, 8, 9, 4, 5, 6]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens.tolist() == [0, 3, 4, 6]
    assert batch.lengths == (3, 1, 2) and batch.max_seqlen == 3
    assert batch.seq_ids.tolist() == [0, 0, 0, 1, 2, 2]


def test_pack_sequences_rejects_empty() -> None:
    with pytest.raises(InvalidInputError):
        pack_sequences([[1], []], CPU)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [None, 0, 3, 40])
def test_sdpa_matches_dense_reference(seed: int, window: int | None) -> None:
    batch = random_batch(seed)
    t = batch.num_tokens
    q, k, v = (torch.randn(t, 2, 8, dtype=torch.float64) for _ in range(3))
    out = attention(q, k, v, batch, window=window, backend="sdpa")
    assert (out - dense_reference(q, k, v, batch, window)).abs().max() < 1e-10


@pytest.mark.parametrize("window", [None, 5])
def test_flex_matches_dense_reference(window: int | None) -> None:
    batch = random_batch(11, max_len=60)
    t = batch.num_tokens
    q, k, v = (torch.randn(t, 2, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # uncompiled flex on CPU warns
        out = attention(q, k, v, batch, window=window, backend="flex")
    assert (out - dense_reference(q, k, v, batch, window)).abs().max() < 1e-5


def test_attention_never_crosses_sequences() -> None:
    batch = pack_sequences([[1] * 30, [1] * 50], CPU)
    q, k, v = (torch.randn(80, 2, 8) for _ in range(3))
    first = attention(q, k, v, batch, window=4, backend="sdpa")[:30]
    v2 = v.clone()
    v2[30:] += 100.0  # change only the second sequence
    assert torch.equal(attention(q, k, v2, batch, window=4, backend="sdpa")[:30], first)


def test_local_window_is_inclusive() -> None:
    # With window w the value at distance w is seen, the one at w + 1 is not.
    batch = pack_sequences([[1] * 20], CPU)
    q = torch.zeros(20, 1, 4)
    k = torch.zeros(20, 1, 4)
    v = torch.zeros(20, 1, 4)
    v[13, 0, 0] = 1.0  # distance 3 from token 10
    v[14, 0, 1] = 1.0  # distance 4
    out = attention(q, k, v, batch, window=3, backend="sdpa")
    assert out[10, 0, 0] > 0 and out[10, 0, 1] == 0


def test_sdpa_never_builds_a_length_squared_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 4096
    batch = pack_sequences([[1] * n, [1] * 300, [1] * 290], CPU)
    seen: list[int] = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: object) -> torch.Tensor:
        mask = kw.get("attn_mask")
        seen.append(max(q.numel(), k.numel(), 0 if mask is None else mask.numel()))  # type: ignore[attr-defined]
        return real(q, k, v, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", spy)
    q, k, v = (torch.randn(batch.num_tokens, 2, 8) for _ in range(3))
    attention(q, k, v, batch, window=8, backend="sdpa")
    attention(q, k, v, batch, window=None, backend="sdpa")
    assert seen and max(seen) < n * n


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("banded", [True, False])
def test_local_layers_match_the_reference_on_either_path(
    monkeypatch: pytest.MonkeyPatch, seed: int, banded: bool
) -> None:
    # Short sequences (the usual rerank request) may run a local layer as bucketed attention
    # with a band mask instead of blocked: both must give the windowed result. The lengths
    # give padded buckets, one-sequence buckets and sequences shorter than the window.
    rng = random.Random(seed)
    lengths = [rng.randint(1, 60) for _ in range(rng.randint(2, 9))] + [rng.randint(80, 120)]
    batch = pack_sequences([[1] * n for n in lengths], CPU)
    monkeypatch.setattr(attn, "_banded_is_cheaper", lambda b, w: banded)
    q, k, v = (torch.randn(batch.num_tokens, 2, 8, dtype=torch.float64) for _ in range(3))
    for window in (0, 7, 30):
        out = attention(q, k, v, batch, window=window, backend="sdpa")
        assert (out - dense_reference(q, k, v, batch, window)).abs().max() < 1e-10


def test_local_layers_pick_the_cheaper_path() -> None:
    short = pack_sequences([[1] * 70] * 8, CPU)  # the band covers less than the sequence
    assert attn._banded_is_cheaper(short, 64)
    long = pack_sequences([[1] * 4000, [1] * 300], CPU)
    assert not attn._banded_is_cheaper(long, 64)


def test_global_buckets_bound_padding() -> None:
    buckets = attn._bucket_lengths([8000, 300, 290, 12, 10, 280])
    assert buckets[0] == [0]  # the long document is not padded together with short ones
    assert sorted(i for b in buckets for i in b) == list(range(6))


def test_choose_backend() -> None:
    assert choose_backend(CPU) == "sdpa"
    assert choose_backend(CPU, "sdpa") == "sdpa"
    with pytest.raises(InvalidInputError):
        choose_backend(CPU, "varlen")
    with pytest.raises(InvalidInputError):
        choose_backend(CPU, "nope")


def test_rotary_matches_complex_rotation() -> None:
    d = 8
    inv = default_inv_freq(d, 10000.0)
    pos = torch.tensor([0, 1, 5, 300])
    cos, sin = rotary_cos_sin(inv, pos)
    x = torch.randn(4, 3, d)
    out = apply_rotary(x, cos, sin)
    # Rotate-half pairs dimension i with i + d/2: a complex multiply by e^{i p θ_i}.
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :])
    rot = z * torch.polar(torch.ones(4, d // 2), pos[:, None].float() * inv)[:, None, :]
    assert torch.allclose(out, torch.cat((rot.real, rot.imag), -1), atol=1e-5)
    assert apply_rotary(x.to(torch.bfloat16), cos, sin).dtype == torch.bfloat16


def test_ntk_inv_freq_formula() -> None:
    d, theta, f = 8, 10000.0, 2.0
    i = torch.arange(0, d, 2).double()
    expected = (theta * f) ** (-i / d) / f ** (2 / d)
    assert torch.allclose(ntk_inv_freq(d, theta, f).double(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("window", "lengths"), [(None, [300, 5, 260]), (64, [700, 40, 300]), (200, [520])]
)
def test_flex_block_mask_skips_and_fills_blocks_exactly(
    window: int | None, lengths: list[int]
) -> None:
    # Several 128-token blocks per sequence: full, partial and skipped block pairs all occur.
    batch = pack_sequences([[1] * n for n in lengths], CPU)
    t = batch.num_tokens
    q, k, v = (torch.randn(t, 2, 8) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # uncompiled flex on CPU warns
        out = attention(q, k, v, batch, window=window, backend="flex")
    assert (out - dense_reference(q, k, v, batch, window)).abs().max() < 1e-5
