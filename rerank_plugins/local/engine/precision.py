"""CPU precision modes: native bf16 and dynamic int8, and the hardware checks behind them.

Three modes run the trunk's linear layers (where a 512-token batch spends most of its time):

- ``"float32"``: the reference; parity with transformers within 1e-4.
- ``"bfloat16"``: bf16 weights and activations through oneDNN. Fast only where the CPU
  multiplies bf16 natively (AVX512-BF16 or AMX-BF16); elsewhere oneDNN converts every
  operand to fp32 and the mode is slower than fp32, so it is refused.
- ``"int8"``: the linear layers of the trunk become :class:`Int8DynamicLinear`: weights
  quantized once per output channel, activations per token at every call (symmetric,
  scale ``amax / 127``), the product through ``torch._int_mm`` (oneDNN's u8/s8 GEMM with
  int32 accumulation) and rescaled in fp32. Needs int8 dot-product instructions
  (AVX512-VNNI, AVX-VNNI or AMX-INT8); refused elsewhere.

On the CPU, in ``"float32"`` and ``"bfloat16"``, the trunk's linear layers become
:class:`PackedLinear`: the weight reordered once into oneDNN's blocked layout and
multiplied by oneDNN's own GEMM (what Inductor's weight freezing does), instead of
``F.linear``'s BLAS call. On AMD EPYC (Zen 4) the torch CPU wheel's fp32 BLAS runs at
about 100 GFLOP/s per core against oneDNN's 230-250 (``benchmarks/cpu_peak.py``); the
product is the same fp32 product, summed in another order (parity unchanged).

In every mode RoPE tables and rotation, softmax (inside SDPA), LayerNorm statistics,
pooling and the classification heads run in fp32; int8 keeps the whole residual stream
in fp32 too.

The feature flags come from torch's own CPU probes and ``/proc/cpuinfo``;
:func:`cpu_features` is the one place to fake them in tests.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from rerank_plugins.errors import UnsupportedDeviceError

__all__ = [
    "BF16_FEATURES",
    "INT8_FEATURES",
    "Int8DynamicLinear",
    "PackedLinear",
    "add_linear",
    "check_mode",
    "cpu_features",
    "dequantize",
    "has_packed_linear",
    "prepack_linears",
    "prepare_cpu_linears",
    "quantize_linears",
    "quantize_rows",
]

logger = logging.getLogger(__name__)

BF16_FEATURES = frozenset({"avx512_bf16", "amx_bf16"})
INT8_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_features() -> frozenset[str]:
    """Instruction-set flags of this CPU that the fast modes need (lower-case, as in
    ``/proc/cpuinfo``): a subset of ``BF16_FEATURES | INT8_FEATURES``."""
    found: set[str] = set()
    probes = {
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_bf16": "_is_amx_tile_supported",  # AMX tiles ship with AMX-BF16 and AMX-INT8
        "amx_int8": "_is_amx_tile_supported",
        "avx512_vnni": "_is_vnni_supported",
    }
    cpu = getattr(torch, "cpu", None)
    for flag, probe in probes.items():
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except RuntimeError:  # a probe torch could not run on this build
            pass
    found |= _cpuinfo_flags() & (BF16_FEATURES | INT8_FEATURES)
    return frozenset(found)


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux: torch's probes decide alone
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def check_mode(device: torch.device, dtype: torch.dtype, *, quantize: str | None) -> None:
    """Raise :class:`UnsupportedDeviceError` when ``device`` cannot run the mode fast.

    bf16 on a CPU needs one of ``BF16_FEATURES``; ``quantize="int8"`` needs a CPU with one
    of ``INT8_FEATURES`` (the int8 path is CPU-only: GPUs have bf16 tensor cores).
    """
    if quantize is not None:
        if quantize != "int8":
            raise UnsupportedDeviceError(f"unknown quantization {quantize!r}; only 'int8'")
        if device.type != "cpu":
            raise UnsupportedDeviceError(
                f"dtype='int8' runs on the CPU only; on {device.type} use 'bfloat16' or 'float16'"
            )
        _require(INT8_FEATURES, "dtype='int8'", "int8 dot products")
    elif device.type == "cpu" and dtype == torch.bfloat16:
        _require(BF16_FEATURES, "dtype='bfloat16'", "bf16 arithmetic")


def _require(needed: Iterable[str], mode: str, what: str) -> None:
    have = cpu_features()
    if not have & set(needed):
        raise UnsupportedDeviceError(
            f"{mode} is refused on this CPU: it has no native {what} "
            f"(needs one of {sorted(needed)}; found {sorted(have) or 'none of them'}), "
            "so it would run slower than float32. Use dtype='float32'."
        )


class Int8DynamicLinear(nn.Module):
    """``y = x @ W.T + b`` with int8 ``W`` (per output channel) and int8 ``x`` (per token).

    ``x [T, in]`` float → ``[T, out]`` float32. Quantization is symmetric: scale
    ``amax / 127`` per row of ``W`` once, per row of ``x`` on every call, so one outlier
    token does not coarsen the others. The int32 product is exact; the only error is the
    rounding of ``x`` and ``W`` (about 1% of a row's largest value, relative).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # [in, out] contiguous: the layout _int_mm reads fastest as its second operand.
        self.weight_t: torch.Tensor
        self.weight_scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight_t", q.t().contiguous())
        self.register_buffer("weight_scale", scale.float())
        b = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, scale = quantize_rows(x.reshape(-1, shape[-1]).float())
        acc = torch._int_mm(xq, self.weight_t)  # int32, exact
        out = dequantize(acc, scale, self.weight_scale, self.bias)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of fp32 ``x [T, n]``: ``(int8 [T, n], scale [T, 1])``,
    ``scale = amax / 127``. Plain torch: the fused CPU steps compile this same function."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
    return torch.div(x, scale).round_().to(torch.int8), scale


def dequantize(
    acc: torch.Tensor, scale: torch.Tensor, wscale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """The fp32 product from the int32 ``acc [T, out]``, the rows' and the weight's scales."""
    out = acc.to(torch.float32).mul_(scale).mul_(wscale)
    return out if bias is None else out.add_(bias)


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by :class:`Int8DynamicLinear`, in place.

    Returns how many were replaced. Call it on the trunk only: the heads stay fp32.
    """
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8DynamicLinear(child))
            count += 1
        else:
            count += quantize_linears(child)
    return count


def has_packed_linear() -> bool:
    """Whether this torch build has oneDNN's prepacked linear (x86 and arm64 CPU wheels)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        return bool(
            torch.backends.mkldnn.is_available()
            and hasattr(mkldnn, "_linear_pointwise")
            and hasattr(mkldnn, "_reorder_linear_weight")
        )
    except (AttributeError, RuntimeError):  # an op namespace this build lacks
        return False


class PackedLinear(nn.Module):
    """``y = x @ W.T + b`` through oneDNN with ``W`` reordered once at load (fp32 or bf16).

    ``x [..., in]`` in the weight's dtype → ``[..., out]`` in that dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(w, None))
        b = None if linear.bias is None else linear.bias.detach()
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, shape[-1]), self.weight, self.bias, "none", [], ""
        )
        return out.reshape(*shape[:-1], self.out_features)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` for 2-d ``x [T, in]``, the add fused into the GEMM."""
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def add_linear(residual: torch.Tensor, x: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """``residual + linear(x)``, the add fused into the matmul when there is no bias (an
    int8 :class:`Int8DynamicLinear` adds after)."""
    if isinstance(linear, nn.Linear) and linear.bias is None:
        return torch.addmm(residual, x, linear.weight.t())
    if isinstance(linear, PackedLinear) and x.dim() == 2 and residual.dtype == x.dtype:
        return linear.add_to(residual, x)  # oneDNN-prepacked: the add fused as well
    return residual + linear(x)


def prepack_linears(module: nn.Module) -> int:
    """Replace every fp32/bf16 ``nn.Linear`` inside ``module`` by :class:`PackedLinear`, in
    place; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            if child.weight.device.type == "cpu" and child.weight.dtype in (
                torch.float32,
                torch.bfloat16,
            ):
                setattr(module, name, PackedLinear(child))
                count += 1
        else:
            count += prepack_linears(child)
    return count


def prepare_cpu_linears(module: nn.Module, *, device: torch.device, quantize: str | None) -> int:
    """The fastest linear layers for the mode: int8 (:func:`quantize_linears`) when
    ``quantize="int8"``, oneDNN-prepacked (:func:`prepack_linears`) on a CPU whose torch
    has them, else unchanged. Returns how many layers were replaced."""
    if quantize == "int8":
        return quantize_linears(module)
    if device.type == "cpu" and has_packed_linear():
        return prepack_linears(module)
    return 0
