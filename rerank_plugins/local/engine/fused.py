"""The CPU trunk's elementwise steps, fused into single passes by Inductor.

Between two matrix products a layer runs a chain of elementwise steps: LayerNorm, RoPE,
the GELU gate, and in the int8 mode the per-token quantization before every product and
the rescaling after it. Run one torch op at a time, each step reads and writes the whole
``[T, width]`` activation: on a 512-token batch these passes cost as much CPU time as the
int8 matrix products themselves (``benchmarks/RESULTS.md``, issue 25). Each function below
is one such chain, written in plain torch; :class:`FusedStep` compiles it once with
``torch.compile(dynamic=True)`` (any token count, one compilation per dtype) into a
single loop that reads its inputs once.

When it runs: on the CPU, for forwards of at least ``FUSE_MIN_ELEMENTS`` activation
elements (below, dispatching a compiled step costs what it saves), when
``RERANK_PLUGINS_COMPILE`` is unset, ``auto`` or ``inline`` and a C++ compiler is on the
path (Inductor generates C++); ``0`` turns it off, ``1`` insists (a failed compilation is
then an error instead of a fallback). Compiling every step takes 13.7 s wall on a cold
cache and 3.5 s once Inductor's on-disk cache (under ``$TORCHINDUCTOR_CACHE_DIR``) holds
them (int8, 6 layers of 384, measured): ``auto`` does it in the background once a
trunk's eager forwards have done about as much work, ``inline`` and ``1`` at its first (see
:mod:`~rerank_plugins.local.engine.modernbert_fused`). A step whose
compilation fails logs one warning and runs the same function eagerly from then on, so
the scores never depend on whether a compiler was found (the parity tests run both).

Numerics: every function computes in fp32 and returns the dtype it was given (bf16 in
the bf16 mode), as the eager trunk does; the fused loops sum in another order (parity
within 1e-4 against transformers unchanged).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from rerank_plugins.errors import UnsupportedDeviceError
from rerank_plugins.local.engine.precision import dequantize
from rerank_plugins.local.engine.precision import quantize_rows as _rows

__all__ = [
    "COMPILE_ENV",
    "FUSE_MIN_ELEMENTS",
    "FusedStep",
    "act_gate",
    "act_gate_quantize",
    "add_dequantize",
    "add_norm_quantize",
    "compile_mode",
    "fusion_enabled",
    "norm_quantize",
    "quantize_rows",
    "rope_qkv",
    "rope_qkv_int8",
    "worth_fusing",
]

logger = logging.getLogger(__name__)

# The activation is passed in (a torch function, or one of the engine's fixed lambdas):
# dynamo guards on its identity, one compilation per activation.
Activation = Callable[[torch.Tensor], torch.Tensor]

COMPILE_ENV = "RERANK_PLUGINS_COMPILE"


def compile_mode() -> str:
    """``"auto"``, ``"inline"``, ``"on"`` or ``"off"``, from ``$RERANK_PLUGINS_COMPILE``
    (``auto``: compiled in the background, :class:`~.modernbert_fused.FusionGate`;
    ``inline``: at the first large forward; ``on``: inline, and a failure is an error)."""
    raw = os.environ.get(COMPILE_ENV, "auto").strip().lower()
    if raw in ("", "auto"):
        return "auto"
    if raw == "inline":
        return "inline"
    if raw in ("1", "on", "true", "yes"):
        return "on"
    if raw in ("0", "off", "false", "no"):
        return "off"
    raise UnsupportedDeviceError(f"{COMPILE_ENV}={raw!r}: use auto, inline, 1 or 0")


@functools.cache
def _compiler_found() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None or any(
        shutil.which(name) is not None for name in ("g++", "clang++")
    )


# A forward fuses when its activations hold at least this many elements (tokens x hidden):
# below it, dispatching a compiled step costs what the passes it saves cost (short
# requests to small models, measured in benchmarks/RESULTS.md).
FUSE_MIN_ELEMENTS = 1 << 17


def worth_fusing(device: torch.device, tokens: int, width: int) -> bool:
    """Whether a forward of ``tokens x width`` activations on ``device`` runs fused."""
    return tokens * width >= FUSE_MIN_ELEMENTS and fusion_enabled(device)


def fusion_enabled(device: torch.device) -> bool:
    """Whether the trunk on ``device`` runs the fused steps (the CPU, compiling allowed)."""
    if device.type != "cpu":
        return False
    mode = compile_mode()
    if mode == "off":
        return False
    if mode == "on":
        return True
    return _compiler_found()


# Each step compiles once per dtype, bias presence, activation, epsilon and 1-vs-many
# tokens; a process holding several models needs more variants than dynamo's default 8.
RECOMPILE_LIMIT = 64


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if isinstance(getattr(config, name, None), int):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
            return


class FusedStep:
    """A pure tensor function, compiled on its first call; eager if compiling fails.

    >>> step = FusedStep(lambda x: x * 2 + 1)
    >>> step.eager(torch.ones(2)).tolist()
    [3.0, 3.0]
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.eager = fn
        self._compiled: Callable[..., Any] | None = None
        self._failed = False
        self._lock = threading.Lock()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any) -> Any:
        if self._failed:
            return self.eager(*args)
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    _raise_recompile_limit()
                    self._compiled = torch.compile(self.eager, dynamic=True, fullgraph=True)
        try:
            return self._compiled(*args)
        except Exception as exc:
            if compile_mode() == "on":
                raise UnsupportedDeviceError(
                    f"{COMPILE_ENV}=1 but Inductor could not compile "
                    f"{self.eager.__name__}: {type(exc).__name__}: {str(exc)[:300]}"
                ) from exc
            self._failed = True
            logger.warning(
                "torch.compile of %s failed (%s: %s); running it eagerly (slower, same "
                "scores). Set %s=0 to skip compiling.",
                self.eager.__name__,
                type(exc).__name__,
                str(exc)[:200],
                COMPILE_ENV,
            )
            return self.eager(*args)


# --- the steps (plain torch; each compiles to one or two loops) -----------------------


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [T, H, D]`` fp32 rotated by ``cos, sin [T, D]`` (both halves repeat)."""
    half = x.shape[-1] // 2
    x1, x2 = x.narrow(-1, 0, half), x.narrow(-1, half, half)
    c, s = cos.narrow(-1, 0, half).unsqueeze(1), sin.narrow(-1, 0, half).unsqueeze(1)
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def _split_rope(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = qkv.shape[0]
    y = qkv.view(t, 3, heads, -1)
    q = _rotate(y.select(1, 0), cos, sin).to(dtype)
    k = _rotate(y.select(1, 1), cos, sin).to(dtype)
    v = y.select(1, 2).to(dtype).contiguous()
    return q, k, v


@FusedStep
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: ``x [T, n]`` → ``(int8 [T, n], fp32 scale [T, 1])``."""
    return _rows(x.to(torch.float32))


@FusedStep
def norm_quantize(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm of ``x [T, n]`` quantized per row."""
    h = F.layer_norm(x.to(torch.float32), (x.shape[-1],), weight, bias, eps)
    return _rows(h)


@FusedStep
def add_norm_quantize(
    x: torch.Tensor,
    acc: torch.Tensor,
    scale: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The residual ``x + dequantize(acc)``, and its LayerNorm quantized per row."""
    out = x + dequantize(acc, scale, wscale, bias)
    return (out, *_rows(F.layer_norm(out, (out.shape[-1],), weight, norm_bias, eps)))


@FusedStep
def add_dequantize(
    x: torch.Tensor,
    acc: torch.Tensor,
    scale: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The residual ``x + dequantize(acc)``."""
    return x + dequantize(acc, scale, wscale, bias)


@FusedStep
def act_gate(y: torch.Tensor, act: Activation) -> torch.Tensor:
    """``act(input) * gate`` of the packed ``y = [input | gate]``, in ``y``'s dtype."""
    a, g = y.to(torch.float32).chunk(2, dim=-1)
    return (act(a) * g).to(y.dtype)


@FusedStep
def act_gate_quantize(
    acc: torch.Tensor,
    scale: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    act: Activation,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``act(input) * gate`` of the dequantized ``[input | gate]``, quantized per row."""
    a, g = dequantize(acc, scale, wscale, bias).chunk(2, dim=-1)
    return _rows(act(a) * g)


@FusedStep
def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[q | k | v]`` ``[T, 3 * H * D]`` → contiguous ``q, k, v [T, H, D]``, q and k
    rotated (in fp32), all in ``qkv``'s dtype."""
    return _split_rope(qkv.to(torch.float32), cos, sin, heads, qkv.dtype)


@FusedStep
def rope_qkv_int8(
    acc: torch.Tensor,
    scale: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`rope_qkv` of the dequantized int32 product, ``dtype`` out."""
    return _split_rope(dequantize(acc, scale, wscale, bias), cos, sin, heads, dtype)
