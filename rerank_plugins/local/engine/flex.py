"""FlexAttention over packed variable-length batches (the ``"flex"`` backend of
:func:`~rerank_plugins.local.engine.attention.attention`): a document (+ sliding window)
block mask built on the host from the sequence lengths, compiled on CUDA, uncompiled (a
dense reference) elsewhere."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from rerank_plugins.local.engine.packing import PackedBatch, host_seq_ids

__all__ = ["FLEX_BLOCK", "flex", "flex_block_mask"]

_compiled_flex: Callable[..., Any] | None = None


def _flex_fn(device: torch.device) -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention  # uncompiled: a dense reference, only sensible for small T
    global _compiled_flex
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    key = ("flex_mask", window)
    block_mask = batch.cache.get(key)
    if block_mask is None:
        block_mask = flex_block_mask(batch.lengths, window, q.device)
        batch.cache[key] = block_mask
    out = _flex_fn(q.device)(
        q.transpose(0, 1).unsqueeze(0),
        k.transpose(0, 1).unsqueeze(0),
        v.transpose(0, 1).unsqueeze(0),
        block_mask=block_mask,
        scale=scale,
    )
    return out.select(0, 0).transpose(0, 1)


FLEX_BLOCK = 128  # FlexAttention's default (and compiled kernels') block size


def flex_block_mask(lengths: Sequence[int], window: int | None, device: torch.device) -> Any:
    """A FlexAttention ``BlockMask`` for sequences of ``lengths`` packed on one axis:
    tokens attend within their sequence (and to keys ``|i - j| <= window``).

    The block structure comes from the host lengths: a block pair is skipped when the
    two blocks share no sequence (or lie beyond the window), computed without the mask
    (``full``) when both hold one and the same sequence within the window, and masked
    token by token otherwise. This replaces ``create_block_mask``, which evaluates the
    mask on all ``T x T`` token pairs on the device.
    """
    from torch.nn.attention.flex_attention import BlockMask

    t = int(sum(lengths))
    n = math.ceil(t / FLEX_BLOCK)
    tail = n * FLEX_BLOCK - t
    # Padding tokens get their own sequence id (len(lengths)): they never meet real ones.
    seq = F.pad(host_seq_ids(lengths), (0, tail), value=len(lengths))
    blocks = seq.view(n, FLEX_BLOCK)
    lo, hi = blocks.amin(1), blocks.amax(1)
    meets = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])
    single = (lo == hi) & (hi < len(lengths))
    full = single[:, None] & single[None, :] & (lo[:, None] == lo[None, :])
    if window is not None:
        gap = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs()
        meets &= (gap - 1) * FLEX_BLOCK + 1 <= window  # nearest tokens of the two blocks
        full &= (gap + 1) * FLEX_BLOCK - 1 <= window  # farthest tokens of the two blocks
    partial = meets & ~full

    def ordered(kind: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = kind.sum(1, dtype=torch.int32)
        index = torch.argsort((~kind).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return count[None, None], index[None, None]

    kv_num, kv_index = ordered(partial)
    full_num, full_index = ordered(full)
    seq_device = seq.to(device, non_blocking=True)

    # On the packed axis, two tokens of one sequence are as far apart as their positions.
    def mask_mod(b: Any, h: Any, qi: torch.Tensor, ki: torch.Tensor) -> torch.Tensor:
        same = seq_device[qi] == seq_device[ki]
        if window is None:
            return same
        return same & ((qi - ki).abs() <= window)

    mask = BlockMask.from_kv_blocks(
        kv_num, kv_index, full_num, full_index, FLEX_BLOCK, mask_mod, seq_lengths=(t, t)
    )
    return mask.to(device)
