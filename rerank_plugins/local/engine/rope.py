"""Rotary position embeddings on packed token axes (pure functions, fp32 tables).

Rotate-half convention (the one ModernBERT, GTE and Llama use): a head vector
``x = [x1 | x2]`` at position ``p`` becomes ``x * cos(p θ) + [-x2 | x1] * sin(p θ)`` with
the frequency vector repeated over both halves.

>>> import torch
>>> inv = default_inv_freq(4, 10000.0)
>>> inv.tolist()
[1.0, 0.009999999776482582]
>>> cos, sin = rotary_cos_sin(inv, torch.tensor([0, 1]))
>>> tuple(cos.shape), cos.dtype
((2, 4), torch.float32)
>>> x = torch.ones(2, 1, 4)
>>> torch.equal(apply_rotary(x, cos, sin)[0], x[0])  # position 0 is the identity
True
"""

from __future__ import annotations

import torch

__all__ = ["apply_rotary", "default_inv_freq", "ntk_inv_freq", "rotary_cos_sin"]


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Inverse frequencies ``theta ** (-2i / head_dim)``, fp32 ``[head_dim // 2]``."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head_dim, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


def ntk_inv_freq(head_dim: int, theta: float, factor: float) -> torch.Tensor:
    """NTK-scaled inverse frequencies ``(theta*f) ** (-2i/d) / f ** (2/d)``, fp32 ``[d // 2]``.

    The form GTE "new" checkpoints use with ``rope_scaling = {"type": "ntk", "factor": f}``.
    """
    base = default_inv_freq(head_dim, theta * factor)
    return base / factor ** (2.0 / head_dim)


def rotary_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos and sin tables for ``position_ids [T]``: two fp32 ``[T, 2 * len(inv_freq)]``.

    Computed in fp32 whatever the model dtype (bf16 positions beyond 256 are not exact).
    """
    freqs = torch.outer(
        position_ids.to(torch.float32),
        inv_freq.to(device=position_ids.device, dtype=torch.float32),
    )
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [T, H, D]`` by the tables ``cos, sin [T, D]``; math in fp32, returns x.dtype.

    ``x`` may be a strided view (e.g. the q and k parts of a packed qkv projection).
    """
    half = x.shape[-1] // 2
    xf = x.float()
    # narrow, not [..., :half]: traced on fake CUDA in CI, where Python indexing of device
    # tensors is unavailable.
    x1, x2 = xf.narrow(-1, 0, half), xf.narrow(-1, half, half)
    # The tables repeat the frequencies over both halves: the first half is enough.
    c, s = cos.narrow(-1, 0, half).unsqueeze(1), sin.narrow(-1, 0, half).unsqueeze(1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    first, second = out.narrow(-1, 0, half), out.narrow(-1, half, half)
    torch.mul(x1, c, out=first).addcmul_(x2, s, value=-1.0)  # x1 cos - x2 sin
    torch.mul(x2, c, out=second).addcmul_(x1, s)  # x2 cos + x1 sin
    return out.to(x.dtype)
