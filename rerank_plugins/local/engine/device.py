"""Device and dtype choice shared by every local scorer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device", "pick_dtype"]

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def pick_device(device: str | None) -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; anything else as torch reads it.

    CUDA devices always carry an index (``cuda`` becomes ``cuda:<current device>``)."""
    torch = require("torch")
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
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
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``"auto"``/``None`` → bfloat16 on CUDA, float32 elsewhere."""
    torch = require("torch")
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = _DTYPES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise InvalidInputError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)} or 'auto'")
    return getattr(torch, name)
