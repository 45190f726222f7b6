"""Device, dtype and batch-size choice shared by every local scorer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CPU_BATCH_TOKENS",
    "GPU_BATCH_TOKENS",
    "MAX_GPU_BATCH_TOKENS",
    "default_batch_tokens",
    "mps_available",
    "pick_device",
    "pick_dtype",
    "pick_mode",
]

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
_QUANTIZED = {"int8": "int8", "qint8": "int8"}

# Token budget of one forward. On a GPU a large budget fills the device; on a CPU the
# matmuls are already efficient at a few thousand rows, and the largest buffers of a
# forward (4 x 2 x intermediate bytes per token out of the MLP's first product: 19 MB at
# 2,048 tokens on a 768-wide ModernBERT) then stay under glibc's 32 MB mmap ceiling. Above
# it, they are mapped and page-faulted in on every forward (70,000-120,000 faults per
# pass where 2,048 had none), whenever the allocator's history puts them there: 4,096 ran
# long documents 1.0-1.4x slower, 2,048 never slower, at half the peak memory
# (benchmarks/RESULTS.md, "CPU token budget"). CUDA budgets grow with the card's memory:
# GPU_BATCH_TOKENS per GIB_PER_STEP GiB, at most MAX_GPU_BATCH_TOKENS (131,072 on 80 GiB).
GPU_BATCH_TOKENS = 16384
CPU_BATCH_TOKENS = 2048
MAX_GPU_BATCH_TOKENS = 8 * GPU_BATCH_TOKENS
GIB_PER_STEP = 10


def mps_available() -> bool:
    """Whether this torch can run on Apple's Metal (MPS) device."""
    torch = require("torch")
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(device: str | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else Apple MPS, else CPU; anything else
    as torch reads it (checked to be available).

    CUDA devices always carry an index (``cuda`` becomes ``cuda:<current device>``).
    Every local scorer calls this first: it also fixes the process's intra-op threads
    (:func:`~rerank_plugins.local.engine.threads.configure_threads`, once) before any
    forward runs."""
    torch = require("torch")
    from rerank_plugins.local.engine.threads import configure_threads

    configure_threads()
    if device in (None, "auto"):
        if torch.cuda.is_available():
            device = "cuda"
        else:
            device = "mps" if mps_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(f"unknown device {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("device 'cuda' was asked for but CUDA is not available")
        if dev.index is None:
            # An explicit index: every tensor and module then names the same GPU, and
            # nothing needs the current-device lookup at transfer time.
            dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type == "mps" and not mps_available():
        raise InvalidInputError("device 'mps' was asked for but MPS is not available")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/``None`` → bfloat16 on CUDA, float32 elsewhere (CPU, MPS).

    bf16 on a CPU without native bf16 arithmetic raises
    :class:`~rerank_plugins.errors.UnsupportedDeviceError` (it would be slower than fp32).
    """
    th = require("torch")
    if isinstance(dtype, th.dtype):
        chosen: torch.dtype = dtype
    elif dtype in (None, "auto"):
        chosen = th.bfloat16 if device.type == "cuda" else th.float32
    else:
        name = _DTYPES.get(str(dtype).removeprefix("torch."))
        if name is None:
            raise InvalidInputError(
                f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'"
            )
        chosen = getattr(th, name)
    if device.type == "cpu" and chosen == th.bfloat16:
        from rerank_plugins.local.engine.precision import check_mode

        check_mode(device, chosen, quantize=None)
    return chosen


def pick_mode(
    dtype: str | torch.dtype | None, device: torch.device
) -> tuple[torch.dtype, str | None]:
    """``(compute dtype, quantization)`` for a scorer that offers the int8 mode.

    ``"int8"`` → ``(float32, "int8")`` after checking the CPU has int8 dot products; any
    other value → ``(pick_dtype(...), None)``.
    """
    torch = require("torch")
    if isinstance(dtype, str) and dtype in _QUANTIZED:
        from rerank_plugins.local.engine.precision import check_mode

        check_mode(device, torch.float32, quantize=_QUANTIZED[dtype])
        return torch.float32, _QUANTIZED[dtype]
    return pick_dtype(dtype, device), None


def default_batch_tokens(device: torch.device, *, memory_bytes: int | None = None) -> int:
    """The token budget of one forward when the caller gives none (the one policy).

    CPU: 2,048. CUDA: 16,384 per 10 GiB of the device's memory (``memory_bytes``, read
    from the device when not given), between 16,384 and 131,072; a CUDA device whose
    memory cannot be read, MPS and other accelerators: 16,384.

    >>> import torch
    >>> default_batch_tokens(torch.device("cpu"))
    2048
    >>> default_batch_tokens(torch.device("cuda", 0), memory_bytes=80 * 2**30)
    131072
    >>> default_batch_tokens(torch.device("cuda", 0), memory_bytes=24 * 2**30)
    32768
    """
    if device.type == "cpu":
        return CPU_BATCH_TOKENS
    if device.type != "cuda":
        return GPU_BATCH_TOKENS
    if memory_bytes is None:
        memory_bytes = _cuda_memory(device)
        if memory_bytes is None:
            return GPU_BATCH_TOKENS
    steps = int(memory_bytes / 2**30 // GIB_PER_STEP)
    return min(MAX_GPU_BATCH_TOKENS, GPU_BATCH_TOKENS * max(1, steps))


def _cuda_memory(device: torch.device) -> int | None:
    torch = require("torch")
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device() if device.index is None else device.index
    return int(torch.cuda.get_device_properties(index).total_memory)
