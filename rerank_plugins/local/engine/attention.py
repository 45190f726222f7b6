"""Bidirectional attention over packed variable-length batches.

Sequences are packed on one token axis (``[T, heads, head_dim]``, no padding tokens) and
described by :class:`~rerank_plugins.local.engine.packing.PackedBatch` (re-exported here).
:func:`attention` never lets a token attend across sequences; ``window=w`` restricts it
further to keys with ``|i - j| <= w`` (inclusive, as ModernBERT's local layers). Backends:

- ``"varlen"``: ``torch.nn.attention.varlen.varlen_attn`` (flash attention on packed
  tokens, window ``(w, w)``), CUDA with fp16/bf16 only. Torches whose ``varlen_attn``
  takes no ``window_size`` (2.10) run local layers on the ``local`` backend instead.
- ``"flex"``: FlexAttention on the packed axis with a document (+ sliding window) block
  mask built on the host from the sequence lengths (no ``T x T`` mask evaluation);
  compiled on CUDA. On CPU it runs uncompiled (a reference, for tests only).
- ``"sdpa"``: ``scaled_dot_product_attention`` anywhere (the CPU default). Global
  attention gathers sequences into length buckets, padded with a key-padding mask of shape
  ``[n, 1, 1, L]`` (the fused CPU/CUDA kernels broadcast it: no ``L x L`` tensor). Local
  attention runs blocked on the packed axis: queries in blocks of ``b`` tokens attend to
  the ``b + 2w`` keys around them, so memory is ``T * (b + 2w)``, linear in length; a
  batch of short sequences (fewer scores that way) runs it bucketed like global attention,
  with a ``[n, 1, L, L]`` band mask (1.15-1.2x faster forwards on 8-60-word passages).

>>> import torch
>>> batch = pack_sequences([[5, 6, 7], [8, 9]], torch.device("cpu"))
>>> batch.position_ids.tolist(), batch.cu_seqlens.tolist(), batch.max_seqlen
([0, 1, 2, 0, 1], [0, 3, 5], 3)
>>> q = k = v = torch.randn(5, 2, 4)
>>> attention(q, k, v, batch, window=1, backend="sdpa").shape
torch.Size([5, 2, 4])
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.engine.flex import flex
from rerank_plugins.local.engine.onednn_attention import sdpa
from rerank_plugins.local.engine.packing import PackedBatch, pack_sequences

__all__ = [
    "BACKENDS",
    "AttentionFeatures",
    "Backends",
    "PackedBatch",
    "attention",
    "choose_backend",
    "choose_backends",
    "contiguous",
    "has_flex",
    "has_varlen",
    "pack_sequences",
]

BACKENDS = ("varlen", "flex", "sdpa")

# Padded-attention cost of a bucket may exceed its real cost (sum of L^2) by this factor
# before a new bucket starts: fewer kernel calls against less wasted work.
_BUCKET_SLACK = 1.3
# A local layer runs bucketed with a band mask when that computes this many times fewer
# scores than the blocked path (near a tie the blocked path's lighter masks win).
_BANDED_SLACK = 1.25


def contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x.contiguous()`` without the Python method, whose binding takes a device guard
    that fake CUDA tensors (the CI trace, CPU-only torch) cannot provide."""
    return x if x.is_contiguous() else x.clone(memory_format=torch.contiguous_format)


def has_varlen() -> bool:
    """Whether this torch ships ``torch.nn.attention.varlen.varlen_attn``."""
    return _varlen_parameters() is not None


def has_flex() -> bool:
    """Whether this torch ships FlexAttention."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _varlen_parameters() -> frozenset[str] | None:
    """The keyword names ``varlen_attn`` takes (they changed between torch releases:
    2.10 has ``is_causal`` and no window; 2.11+ has ``window_size`` and ``scale``), or
    ``None`` when this torch has no ``varlen_attn``."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return frozenset(inspect.signature(varlen_attn).parameters)


@dataclass(frozen=True)
class AttentionFeatures:
    """What the installed torch and a device offer for attention.

    ``varlen``: ``varlen_attn`` exists; ``varlen_window``: it takes ``window_size``;
    ``flex``: FlexAttention exists; ``capability``: the CUDA compute capability, ``None``
    off CUDA. :meth:`detect` reads them; tests build them by hand to fake another torch.
    """

    varlen: bool
    varlen_window: bool
    flex: bool
    capability: tuple[int, int] | None

    @classmethod
    def detect(cls, device: torch.device) -> AttentionFeatures:
        params = _varlen_parameters()
        capability = None
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            capability = (int(major), int(minor))
        return cls(
            varlen=params is not None,
            varlen_window=params is not None and "window_size" in params,
            flex=has_flex(),
            capability=capability,
        )

    @property
    def flash(self) -> bool:
        """Flash-attention kernels (``varlen_attn``) need Ampere (sm80) or newer."""
        return self.varlen and self.capability is not None and self.capability >= (8, 0)

    @property
    def triton(self) -> bool:
        """Compiled FlexAttention needs Triton, which supports Volta (sm70) and newer."""
        return self.flex and self.capability is not None and self.capability >= (7, 0)


@dataclass(frozen=True)
class Backends:
    """The attention backend of global layers (``full``) and of sliding-window ones
    (``local``): they differ only when ``varlen_attn`` cannot take a window."""

    full: str
    local: str

    @classmethod
    def of(cls, backend: str | Backends) -> Backends:
        return backend if isinstance(backend, Backends) else cls(backend, backend)

    def for_window(self, window: int | None) -> str:
        return self.full if window is None else self.local


def choose_backends(
    device: torch.device,
    requested: str = "auto",
    *,
    dtype: torch.dtype | None = None,
    features: AttentionFeatures | None = None,
) -> Backends:
    """The attention backends for ``device`` by feature detection (``features``, detected
    when not given), never by torch version number.

    ``"auto"`` on CUDA: ``varlen`` on flash-capable GPUs (sm80+) with fp16/bf16 (or
    ``dtype`` not given) — on every layer when ``varlen_attn`` takes a window, else on
    global layers only and ``flex`` (or ``sdpa``) on local ones; otherwise ``flex`` where
    Triton runs (sm70+); otherwise length-bucketed ``sdpa``. Elsewhere ``sdpa``. A named
    backend is checked (:class:`InvalidInputError` when it cannot run) and returned.
    """
    f = AttentionFeatures.detect(device) if features is None else features
    half = dtype is None or dtype in (torch.float16, torch.bfloat16)
    cuda = device.type == "cuda"
    local_fallback = "flex" if cuda and f.triton else "sdpa"
    if requested == "auto":
        if cuda and f.flash and half:
            return Backends("varlen", "varlen" if f.varlen_window else local_fallback)
        if cuda and f.triton:
            return Backends("flex", "flex")
        return Backends("sdpa", "sdpa")
    if requested not in BACKENDS:
        raise InvalidInputError(f"unknown attention backend {requested!r}; use one of {BACKENDS}")
    if requested == "varlen":
        if not (cuda and f.flash and half):
            raise InvalidInputError(
                "the 'varlen' backend needs a CUDA GPU of compute capability 8.0 or newer, "
                "fp16/bf16 weights and a torch with torch.nn.attention.varlen"
            )
        return Backends("varlen", "varlen" if f.varlen_window else local_fallback)
    if requested == "flex" and not f.flex:
        raise InvalidInputError("this torch has no FlexAttention")
    return Backends(requested, requested)


def choose_backend(
    device: torch.device,
    requested: str = "auto",
    *,
    dtype: torch.dtype | None = None,
    features: AttentionFeatures | None = None,
) -> str:
    """The global layers' backend of :func:`choose_backends` (models without local layers)."""
    return choose_backends(device, requested, dtype=dtype, features=features).full


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    *,
    window: int | None,
    backend: str,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of ``q, k, v [T, H, D]`` (RoPE applied) within each sequence → ``[T, H, D]``.

    ``window=None`` attends to the whole sequence, ``window=w`` to keys with
    ``|i - j| <= w``. ``scale`` defaults to ``D ** -0.5``. Softmax runs in fp32 inside
    every backend's kernel.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if window is not None and window + 1 >= batch.max_seqlen:
        window = None  # the band covers every sequence: plain global attention
    if backend == "varlen":
        return _varlen(q, k, v, batch, window, scale)
    if backend == "flex":
        return flex(q, k, v, batch, window, scale)
    if backend == "sdpa":
        if window is None or _banded_is_cheaper(batch, window):
            return _sdpa_global(q, k, v, batch, scale, window)
        return _sdpa_local(q, k, v, batch, window, scale)
    raise InvalidInputError(f"unknown attention backend {backend!r}; use one of {BACKENDS}")


# --- varlen (CUDA) -----------------------------------------------------------------------


def _varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    params = _varlen_parameters() or frozenset()
    kwargs: dict[str, Any] = {}
    if window is not None:
        if "window_size" not in params:
            raise InvalidInputError(
                "this torch's varlen_attn takes no window_size; local layers need another "
                "backend (choose_backends picks one)"
            )
        # Flash attention's window (left, right) keeps keys i - left <= j <= i + right.
        kwargs["window_size"] = (window, window)
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale, q.shape[-1] ** -0.5):
        q = q * (scale * q.shape[-1] ** 0.5)  # the kernel applies D ** -0.5 itself
    out = varlen_attn(
        contiguous(q),  # q and k arrive as strided views of one rotated [T, 2H, D] tensor
        contiguous(k),
        contiguous(v),
        batch.cu_seqlens,
        batch.cu_seqlens,
        batch.max_seqlen,
        batch.max_seqlen,
        **kwargs,
    )
    assert isinstance(out, torch.Tensor)
    return out


# --- sdpa: bucketed global attention ---------------------------------------------------


@dataclass(frozen=True)
class _Bucket:
    """Sequences padded together into ``[n, L]`` (``L`` = ``length``).

    ``start`` is the packed start when the bucket is one sequence (no gather), else -1.
    ``index [n * L]``: packed index of every padded slot (0 on padding); ``valid [R]``: the
    slots holding real tokens, ``dest [R]``: their packed index (for one sequence: its
    packed positions); ``key_mask [n, 1, 1, L]``
    (``None`` when nothing is padded). All built on the host from the lengths: gathering
    and scattering need no boolean mask on the device (which would sync).
    """

    start: int
    length: int
    count: int
    index: torch.Tensor | None
    valid: torch.Tensor | None
    dest: torch.Tensor | None
    key_mask: torch.Tensor | None


def _bucket_lengths(lengths: Sequence[int], slack: float = _BUCKET_SLACK) -> list[list[int]]:
    """Group sequence indices so that a bucket's padded cost ``n * max(L)^2`` stays within
    ``slack`` times its real cost ``sum(L^2)``. Longest first.

    >>> _bucket_lengths([10, 100, 12, 98, 11])
    [[1, 3], [2, 4, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        n = lengths[i]
        if current:
            longest = lengths[current[0]]
            if (len(current) + 1) * longest * longest > slack * (real + n * n):
                buckets.append(current)
                current, real = [], 0
        current.append(i)
        real += n * n
    if current:
        buckets.append(current)
    return buckets


def _global_plan(batch: PackedBatch) -> list[_Bucket]:
    plan = batch.cache.get("sdpa_global")
    if plan is not None:
        return plan
    device = batch.input_ids.device
    starts = [0]
    for n in batch.lengths:
        starts.append(starts[-1] + n)

    def on_device(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

    plan = []
    for members in _bucket_lengths(batch.lengths):
        longest = batch.lengths[members[0]]
        if len(members) == 1:
            s = starts[members[0]]
            span = on_device(list(range(s, s + longest)))
            plan.append(_Bucket(s, longest, 1, None, None, span, None))
            continue
        index: list[int] = []
        valid: list[int] = []
        dest: list[int] = []
        for row, m in enumerate(members):
            n = batch.lengths[m]
            index += [starts[m] + j for j in range(n)] + [0] * (longest - n)
            valid += range(row * longest, row * longest + n)
            dest += range(starts[m], starts[m] + n)
        padded = any(batch.lengths[m] != longest for m in members)
        key_mask = None
        if padded:
            lens = torch.tensor([batch.lengths[m] for m in members])
            mask = torch.arange(longest).unsqueeze(0) < lens.unsqueeze(1)
            key_mask = mask.view(len(members), 1, 1, longest).to(device, non_blocking=True)
        plan.append(
            _Bucket(
                -1,
                longest,
                len(members),
                on_device(index),
                on_device(valid),
                on_device(dest),
                key_mask,
            )
        )
    batch.cache["sdpa_global"] = plan
    return plan


def _one_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over one whole sequence ``[L, H, D]`` (``mask``: a band, or none).

    The inputs must be 4-D ``[1, H, L, D]``: with 3-D ones torch's CPU SDPA takes the math
    path, which materialises the ``L x L`` scores (16 GiB at 32K tokens, 2 heads).
    """
    q4, k4, v4 = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = sdpa(q4, k4, v4, mask, scale)
    return out.select(0, 0).transpose(0, 1)


def _banded_is_cheaper(batch: PackedBatch, window: int) -> bool:
    """Whether a local layer costs less as bucketed attention with a band mask (every
    bucket ``n * L^2`` scores) than blocked (every token against ``block + 2 * window``
    keys): true for batches of short sequences, the usual rerank request. Host arithmetic
    on the lengths, cached on the batch."""
    key = ("sdpa_banded", window)
    cheaper = batch.cache.get(key)
    if cheaper is None:
        block = local_block_size(window)
        blocked = math.ceil(batch.num_tokens / block) * block * (block + 2 * window)
        banded = sum(b.count * b.length * b.length for b in _global_plan(batch))
        cheaper = banded * _BANDED_SLACK <= blocked
        batch.cache[key] = cheaper
    return bool(cheaper)


def _band_masks(batch: PackedBatch, window: int) -> list[torch.Tensor | None]:
    """Per bucket of :func:`_global_plan`: the bool mask allowing keys ``|i - j| <= window``
    (and, in padded buckets, only real keys), ``[n, 1, L, L]``; ``None`` where the band
    covers the bucket's longest sequence. Built on the host, moved without a sync."""
    key = ("sdpa_band", window)
    masks = batch.cache.get(key)
    if masks is not None:
        return masks
    device = batch.input_ids.device
    masks = []
    for bucket in _global_plan(batch):
        length = bucket.length
        if length <= window + 1:
            masks.append(bucket.key_mask)
            continue
        i = torch.arange(length)
        band = ((i.unsqueeze(1) - i.unsqueeze(0)).abs() <= window).view(1, 1, length, length)
        band = band.to(device, non_blocking=True)
        masks.append(band if bucket.key_mask is None else band & bucket.key_mask)
    batch.cache[key] = masks
    return masks


def _sdpa_global(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    scale: float,
    window: int | None = None,
) -> torch.Tensor:
    """Bucketed attention; with ``window``, each bucket's keys limited to the band."""
    t, h, d = q.shape
    plan = _global_plan(batch)
    masks = [b.key_mask for b in plan] if window is None else _band_masks(batch, window)
    if len(plan) == 1 and plan[0].start == 0:  # one sequence: no gather, no key mask
        return _one_sequence(q, k, v, scale, masks[0])
    out = q.new_empty(t, h, d)
    for bucket, mask in zip(plan, masks, strict=True):
        n, length = bucket.count, bucket.length
        assert bucket.dest is not None
        if bucket.index is None:
            qs, ks, vs = (x.narrow(0, bucket.start, length) for x in (q, k, v))
            # index_copy_, not narrow().copy_(): Tensor.copy_'s binding takes a device guard
            # that fake CUDA tensors (the CI trace on a CPU-only torch) cannot provide.
            out.index_copy_(0, bucket.dest, _one_sequence(qs, ks, vs, scale, mask))
            continue
        assert bucket.valid is not None
        qb, kb, vb = (
            x.index_select(0, bucket.index).view(n, length, h, d).transpose(1, 2) for x in (q, k, v)
        )  # [n, H, L, D]
        o = sdpa(qb, kb, vb, mask, scale)
        rows = o.transpose(1, 2).reshape(n * length, h, d).index_select(0, bucket.valid)
        out.index_copy_(0, bucket.dest, rows)
    return out


# --- sdpa: blocked local attention ------------------------------------------------------


def local_block_size(window: int) -> int:
    """Queries per block of the blocked local attention (keys per block: this + 2 * window)."""
    return max(32, min(128, window))


def _local_mask(batch: PackedBatch, window: int, block: int) -> torch.Tensor:
    """Bool ``[n_blocks, 1, block, block + 2 * window]``: same sequence and within the band."""
    key = ("sdpa_local", window, block)
    mask = batch.cache.get(key)
    if mask is not None:
        return mask
    t = batch.num_tokens
    n_blocks = math.ceil(t / block)
    tail = n_blocks * block - t
    seq = batch.seq_ids
    # Padding tokens get sequence id -1 on both sides, so padded query rows still see
    # one key each (no all-masked row, no NaN); they are sliced away afterwards.
    q_seq = F.pad(seq, (0, tail), value=-1).view(n_blocks, block)
    k_seq = F.pad(seq, (window, tail + window), value=-1).unfold(0, block + 2 * window, block)
    i = torch.arange(block, device=seq.device).unsqueeze(1)
    j = torch.arange(block + 2 * window, device=seq.device).unsqueeze(0)
    band = (j - i >= 0) & (j - i <= 2 * window)  # key j sits at i + (j - i - window)
    same = q_seq.unsqueeze(2) == k_seq.unsqueeze(1)
    mask = (same & band.unsqueeze(0)).unsqueeze(1)
    batch.cache[key] = mask
    return mask


def _sdpa_local(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: PackedBatch,
    window: int,
    scale: float,
) -> torch.Tensor:
    t, h, d = q.shape
    block = local_block_size(window)
    mask = _local_mask(batch, window, block)
    n_blocks = mask.shape[0]
    tail = n_blocks * block - t
    span = block + 2 * window

    def keys(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [n_blocks, H, span, D]
        padded = F.pad(x, (0, 0, 0, 0, window, tail + window))
        return padded.unfold(0, span, block).permute(0, 1, 3, 2)

    qb = F.pad(q, (0, 0, 0, 0, 0, tail)).view(n_blocks, block, h, d).transpose(1, 2)
    out = sdpa(qb, keys(k), keys(v), mask, scale)
    return out.transpose(1, 2).reshape(n_blocks * block, h, d).narrow(0, 0, t)
