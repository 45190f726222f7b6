"""Attention on the CPU through oneDNN Graph's fused SDPA kernel, where it is faster.

torch's CPU ``scaled_dot_product_attention`` (its flash kernel) does its block products
with the BLAS of the wheel: MKL, which on AMD CPUs runs at less than half of the fp32 GEMM
peak that oneDNN reaches (``benchmarks/cpu_peak.py``). oneDNN Graph fuses the pattern
``softmax(q @ k^T * scale + mask) @ v`` into one kernel of its own; measured on this
project's 512-token batches (6 heads of 64) it takes 0.45-0.5x the CPU time of torch's
kernel in fp32 (same result within 1e-6) and about 0.25x in bf16
(``benchmarks/RESULTS.md``, issue 25).

torch exposes oneDNN Graph through TorchScript only: :func:`sdpa` traces the pattern once
per input signature (shapes, strides, dtype, mask, scale), runs it twice on the spot so
that TorchScript's profiling executor builds the fused plan (10-100 ms in all, the first
time a signature is seen), and keeps up to ``_CACHE_SIZE`` traced functions. The global
oneDNN fuser flag is switched on only while a plan is built, and restored after.

The kernel materialises a call's score rows, so calls are shaped to bound them: up to
``SHORT_KEYS`` keys a call takes whole rows of queries; beyond, one sequence at a time
with queries in blocks whose scores fit ``_SCORE_BUDGET``. Lengths are padded (padded
keys masked) so that a few signatures serve every batch. Short sequences (under
``MIN_KEYS`` keys, where both kernels cost the same and a trace would only add latency)
and very long ones (over ``MAX_KEYS``) stay on torch's flash kernel, as does everything
when ``RERANK_PLUGINS_COMPILE=0``, when the torch build lacks the fuser, or after a trace
fails (logged once).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rerank_plugins.local.engine.fused import compile_mode
from rerank_plugins.scoring import preemption_point

__all__ = ["MAX_KEYS", "MIN_KEYS", "eligible", "onednn_available", "sdpa"]

logger = logging.getLogger(__name__)

MAX_KEYS = 32768
# Up to this many keys a call takes whole query rows; beyond, queries go in blocks.
SHORT_KEYS = 1024
# Below this many keys torch's kernel is as fast (short passages, measured): no tracing.
MIN_KEYS = 128
_CACHE_SIZE = 256
_WARM_CALLS = 2
_ROUND = 32  # lengths padded to a multiple of this: few signatures, few traces
_LONG_ROUND = 256  # the same beyond SHORT_KEYS (at most 1/4 more keys, usually 1/32)
_SCORE_BUDGET = 64 << 20  # bytes of one call's score block for long keys

_lock = threading.RLock()
_traced: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_state = {"failed": False}


def onednn_available() -> bool:
    """Whether this torch can fuse attention with oneDNN Graph (x86/arm64 CPU wheels)."""
    return (
        not _state["failed"]
        and torch.backends.mkldnn.is_available()
        and hasattr(torch._C, "_jit_set_llga_enabled")
        and hasattr(torch._C, "_jit_llga_enabled")
    )


def _pattern(scale: float, masked: bool) -> Callable[..., torch.Tensor]:
    if masked:

        def attend_masked(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
        ) -> torch.Tensor:
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
            return torch.matmul(torch.softmax(scores, dim=-1), v)

        return attend_masked

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    return attend


def _signature(scale: float, *tensors: torch.Tensor) -> tuple[Any, ...]:
    return (scale, *((t.dtype, tuple(t.shape), t.stride()) for t in tensors))


def _get(key: tuple[Any, ...], scale: float, args: tuple[torch.Tensor, ...]) -> Any:
    """The traced, warmed function for this signature. Tracing and warming hold the lock:
    the oneDNN fuser flag is global, switched on only while TorchScript builds the plan;
    once built, the plan runs fused whatever the flag."""
    with _lock:
        fn = _traced.get(key)
        if fn is not None:
            _traced.move_to_end(key)
            return fn
        before = torch._C._jit_llga_enabled()
        torch._C._jit_set_llga_enabled(True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's deprecation notices
                fn = torch.jit.trace(_pattern(scale, len(args) == 4), args, check_trace=False)
                # The profiling executor runs the unfused graph first, then fuses: run it
                # until it does, so that every result comes from one kernel (same bits).
                for _ in range(_WARM_CALLS):
                    fn(*args)
        finally:
            torch._C._jit_set_llga_enabled(before)
        _traced[key] = fn
        while len(_traced) > _CACHE_SIZE:
            _traced.popitem(last=False)
        return fn


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x [n, H, L, D]`` as a layout oneDNN can describe: contiguous, or the
    ``[n, L, H, D]`` transpose of a contiguous tensor (the packed axis's own); anything
    else (the overlapping windows of blocked local attention) is copied."""
    _, h, length, d = x.shape
    # Strides written out in full: torch calls a tensor contiguous whatever the stride of
    # a size-1 dimension, oneDNN reads every stride as given.
    if x.is_contiguous():
        return x.as_strided(x.shape, (h * length * d, length * d, d, 1))
    if x.transpose(1, 2).is_contiguous():
        return x.as_strided(x.shape, (length * h * d, d, h * d, 1))
    # Copied as [n, L, H, D]: whole token rows at a time, the order they lie in.
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def eligible(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`sdpa` would take the oneDNN kernel for these inputs."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
        and MIN_KEYS <= k.shape[-2] <= MAX_KEYS
        and compile_mode() != "off"  # no C++ compiler needed: oneDNN ships in torch
        and onednn_available()
    )


def _pieces(n: int) -> list[tuple[int, int]]:
    """``n`` rows as power-of-two pieces ``(start, size)``, largest first.

    >>> _pieces(13)
    [(0, 8), (8, 4), (12, 1)]
    """
    out, start, size = [], 0, 1 << (n.bit_length() - 1)
    while size:
        if size <= n - start:
            out.append((start, size))
            start += size
        size >>= 1
    return out


def _round(length: int, step: int) -> int:
    return -(-length // step) * step


def _padded_mask(
    mask: torch.Tensor | None, lq: int, lk: int, rq: int, rk: int
) -> torch.Tensor | None:
    """The boolean mask for queries and keys padded to ``rq`` and ``rk``: padded keys are
    never seen, padded queries (sliced away after) see key 0."""
    if rq == lq and rk == lk:
        return mask
    if mask is None:
        mask = torch.ones(1, 1, 1, lk, dtype=torch.bool)
    mask = F.pad(mask, (0, rk - lk), value=False)
    if mask.shape[2] == lq and rq > lq:
        mask = F.pad(mask, (0, 0, 0, rq - lq), value=False)
        mask[:, :, lq:, 0] = True
    return mask


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)`` for 4-D
    ``[n, H, L, D]`` inputs and a boolean ``mask`` (True: attend) or none, through oneDNN
    Graph when :func:`eligible`, else torch's kernel. Every query row must see a key.

    So that a few traced signatures serve every batch, lengths are padded to a multiple of
    ``_ROUND`` (padded keys masked) and the ``n`` rows run in power-of-two pieces: the
    same input always takes the same pieces, so the result is the same to the bit."""
    if not eligible(q, k):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    try:
        return _onednn(q, k, v, mask, scale)
    except Exception as exc:  # a torch whose TorchScript or oneDNN Graph cannot run this
        _state["failed"] = True
        logger.warning(
            "oneDNN Graph attention failed (%s: %s); using torch's kernel from now on",
            type(exc).__name__,
            str(exc)[:200],
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _query_block(heads: int, keys: int, itemsize: int) -> int:
    """Queries per call for long keys: a power of two (32-256) whose score block
    ``heads x block x keys`` stays within ``_SCORE_BUDGET`` bytes."""
    block = 256
    while block > 32 and heads * block * keys * max(itemsize, 4) > _SCORE_BUDGET:
        block //= 2
    return block


def _onednn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    n, heads, lq, _ = q.shape
    lk = k.shape[2]
    if lk <= SHORT_KEYS:  # whole rows of queries, the n rows in power-of-two pieces
        rk = _round(lk, _ROUND)
        rq = _round(lq, _ROUND)
        block, pieces = rq, _pieces(n)
    else:  # long keys: one row at a time, queries in blocks (bounded score memory)
        rk = _round(lk, _LONG_ROUND)
        block = _query_block(heads, rk, q.element_size())
        rq = _round(lq, block)
        pieces = [(row, 1) for row in range(n)]
    if rq != lq:
        q = F.pad(q, (0, 0, 0, rq - lq))
    if rk != lk:
        k, v = F.pad(k, (0, 0, 0, rk - lk)), F.pad(v, (0, 0, 0, rk - lk))
    mask = _padded_mask(mask, lq, lk, rq, rk)
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        additive.masked_fill_(mask.logical_not(), float("-inf"))
    rows = []
    for start, size in pieces:
        kv = tuple(_dense(x.narrow(0, start, size)) for x in (k, v))
        m = None
        if additive is not None:
            m = additive if additive.shape[0] == 1 else additive.narrow(0, start, size)
        blocks = []
        for first in range(0, rq, block):
            if first:  # a long sequence's attention gives way between query blocks too
                preemption_point()
            args = (_dense(q.narrow(0, start, size).narrow(2, first, block)), *kv)
            if m is not None:
                args = (*args, m if m.shape[2] == 1 else m.narrow(2, first, block))
            blocks.append(_get(_signature(scale, *args), scale, args)(*args))
        rows.append(blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=2))
    out = rows[0] if len(rows) == 1 else torch.cat(rows)
    return out if rq == lq else out.narrow(2, 0, lq)
