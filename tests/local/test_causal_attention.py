"""Causal attention after a shared context, against a dense reference."""

from __future__ import annotations

import random

import pytest
import torch

from rerank_plugins.local.engine import causal
from rerank_plugins.local.engine.causal import CausalBatch, causal_attention


def dense_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    past: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Each sequence: softmax over [context | own keys <= i], GQA by repeating heads."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    start = 0
    for n in lengths:
        qs = q[start : start + n]
        ks, vs = k[start : start + n], v[start : start + n]
        if past is not None:
            ks, vs = torch.cat((past[0], ks)), torch.cat((past[1], vs))
        ks, vs = ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1)
        p = ks.shape[0] - n
        scores = torch.einsum("ihd,jhd->hij", qs, ks) * qs.shape[-1] ** -0.5
        i = torch.arange(n)[:, None]
        j = torch.arange(p + n)[None, :]
        scores = scores.masked_fill(j > i + p, float("-inf"))
        out[start : start + n] = torch.einsum("hij,jhd->ihd", scores.softmax(-1), vs)
        start += n
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("context", [0, 1, 9])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
def test_causal_attention_after_a_context_matches_the_reference(
    seed: int, context: int, heads: tuple[int, int]
) -> None:
    # Padded buckets, one-sequence buckets and one-token sequences all occur.
    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 6))] + [rng.randint(60, 90)]
    h, hkv = heads
    batch = CausalBatch.pack([[1] * n for n in lengths], torch.device("cpu"), context=context)
    t = sum(lengths)
    q = torch.randn(t, h, 8, dtype=torch.float64)
    k, v = (torch.randn(t, hkv, 8, dtype=torch.float64) for _ in range(2))
    past = None
    if context:
        past = (
            torch.randn(context, hkv, 8, dtype=torch.float64),
            torch.randn(context, hkv, 8, dtype=torch.float64),
        )
    out = causal_attention(q, k, v, batch, past=past, backend="sdpa", scale=8**-0.5)
    assert (out - dense_reference(q, k, v, lengths, past)).abs().max() < 1e-10


def test_the_cpu_context_path_equals_the_masked_one() -> None:
    # The two-pass merge (CPU) against one masked pass, in fp32 as the engine runs it.
    torch.manual_seed(0)
    q = torch.randn(3, 8, 50, 16)
    k, v = (torch.randn(3, 4, 50, 16) for _ in range(2))
    past = (torch.randn(7, 4, 16), torch.randn(7, 4, 16))
    merged = causal._context_then_causal(q, k, v, past, 0.25)
    pk, pv = (x.transpose(0, 1).unsqueeze(0).expand(3, 4, 7, 16) for x in past)
    mask = causal._causal_mask(50, 7, torch.device("cpu"))
    masked = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat((pk, k), 2), torch.cat((pv, v), 2), attn_mask=mask, scale=0.25, enable_gqa=True
    )
    assert (merged - masked).abs().max() < 1e-5
