"""This CPU's measured GEMM peak per precision, and the FLOPs of a ModernBERT forward.

Used by ``bench_cpu_modes.py`` to state every throughput as a fraction of what the machine
itself can do in the mode's precision.

**Peak.** One large matrix product (``m = k = n = --peak-size``, 1,024 by default), timed
on the process-CPU clock (``time.process_time``: the sum over every thread, so a figure
is per CPU-second and comparable across thread counts and under background load), best
of ``repeats``, in each kernel that can serve a precision; the best kernel per precision
is the peak:

- fp32: ``torch.mm`` (the wheel's BLAS: MKL) and oneDNN's prepacked linear
  (``torch.ops.mkldnn._linear_pointwise`` on a ``_reorder_linear_weight`` weight: on
  AMD EPYC 2.3x the MKL rate);
- bf16: the same two on bf16 tensors (oneDNN, AVX512-BF16 / AMX where present);
- int8: ``torch._int_mm`` (s8 by s8 to s32, oneDNN), and the quantized engines' dynamic
  and static linears with prepacked per-channel weights (``fbgemm``, ``onednn``, ``x86``:
  ``torch.ops.quantized.linear_dynamic`` / ``linear``), whichever the build has.

**FLOPs of a forward** (multiply-add = 2 operations), from the config and the actual pair
token counts ``L_i`` of the documents (what the model must compute, without padding):

- linear layers, per layer: ``2 · T · h · (3h + h + 2i + i)`` (``Wqkv``, ``Wo``,
  ``Wi`` packing input and gate, ``mlp.Wo``) with ``T = Σ L_i``, ``h`` hidden, ``i``
  intermediate; plus the head ``2 · n · (h·h + h)``;
- attention, per layer: ``4 · Σ_i L_i · w_i · h`` (``QKᵀ`` and ``PV``), with ``w_i = L_i``
  on global layers and, on local layers, the mean number of keys a query sees within
  ``±local_attention/2`` (exact for each ``L_i``).

An engine that pads (sentence-transformers) or computes a dense attention does more work
than this count: its fraction of peak is of the useful work, which is what a user buys.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class Peak:
    """The best kernel found for a precision and its rate, in G(FL)OP per CPU-second."""

    precision: str
    kernel: str
    gops: float


def _best_cpu_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return max(best, 1e-9)


def _int8_kernels(a: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], Any]]:
    n, k = w.shape
    aq = torch.randint(-127, 128, a.shape, dtype=torch.int8)
    wt = torch.randint(-127, 128, (k, n), dtype=torch.int8)
    kernels: dict[str, Callable[[], Any]] = {"torch._int_mm": lambda: torch._int_mm(aq, wt)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated, still the API
        for engine in torch.backends.quantized.supported_engines:
            if engine in ("none", "qnnpack"):
                continue
            torch.backends.quantized.engine = engine
            scales = w.abs().amax(dim=1) / 127.0
            qw = torch.quantize_per_channel(
                w, scales, torch.zeros(n, dtype=torch.long), 0, torch.qint8
            )
            packed = torch.ops.quantized.linear_prepack(qw, None)
            qa = torch.quantize_per_tensor(a, float(a.abs().max()) / 127.0, 128, torch.quint8)
            kernels[f"{engine} linear_dynamic"] = functools.partial(
                _with_engine, engine, torch.ops.quantized.linear_dynamic, a, packed, True
            )
            kernels[f"{engine} linear (static)"] = functools.partial(
                _with_engine, engine, torch.ops.quantized.linear, qa, packed, 0.1, 128
            )
    return kernels


def _packed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _with_engine(engine: str, op: Callable[..., Any], *args: Any) -> Any:
    torch.backends.quantized.engine = engine
    return op(*args)


def measure_peaks(*, size: int = 1024, repeats: int = 5) -> dict[str, Peak]:
    """Best measured GEMM rate per precision at torch's current thread count."""
    torch.manual_seed(0)
    a = torch.randn(size, size)
    w = torch.randn(size, size)
    ab, wb = a.bfloat16(), w.bfloat16().t()
    ops = 2.0 * size**3
    candidates: dict[str, dict[str, Callable[[], Any]]] = {
        "fp32": {"torch.mm": lambda: torch.mm(a, w.t())},
        "bf16": {"torch.mm": lambda: torch.mm(ab, wb)},
        "int8": {},
    }
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(w.bfloat16(), None)
        abf = a.bfloat16()
        candidates["fp32"]["oneDNN packed linear"] = lambda: _packed(a, packed)
        candidates["bf16"]["oneDNN packed linear"] = lambda: _packed(abf, packed_bf16)
    except (AttributeError, RuntimeError):  # a build without oneDNN
        pass
    try:
        candidates["int8"] = _int8_kernels(a, w)
    except RuntimeError:  # a build without int8 GEMMs: no int8 peak
        pass
    engine = torch.backends.quantized.engine
    peaks = {}
    try:
        for precision, kernels in candidates.items():
            rates = {}
            for name, fn in kernels.items():
                try:
                    rates[name] = ops / _best_cpu_seconds(fn, repeats) / 1e9
                except RuntimeError:  # kernel not in this build / not for this CPU
                    continue
            if rates:
                best = max(rates, key=rates.__getitem__)
                peaks[precision] = Peak(precision, best, rates[best])
    finally:
        torch.backends.quantized.engine = engine
    return peaks


def local_keys(length: int, half_window: int) -> int:
    """``Σ_q`` keys within ``±half_window`` of ``q`` in a sequence of ``length`` tokens."""
    w = half_window
    if length > 2 * w:  # the first and last w queries lose w, w-1, ..., 1 keys
        return length * (2 * w + 1) - w * (w + 1)
    return sum(min(length, q + w + 1) - max(0, q - w) for q in range(length))


def forward_flops(
    lengths: Sequence[int],
    *,
    layers: int,
    hidden: int,
    intermediate: int,
    global_every: int,
    local_attention: int,
) -> dict[str, float]:
    """``{"linear": ..., "attention": ..., "total": ...}`` operations of one forward over
    documents whose pairs have ``lengths`` tokens (docstring of this module)."""
    tokens = sum(lengths)
    h, i = hidden, intermediate
    linear = layers * 2.0 * tokens * h * (3 * h + h + 2 * i + i) + 2.0 * len(lengths) * (h * h + h)
    n_global = sum(1 for layer in range(layers) if layer % global_every == 0)
    n_local = layers - n_global
    full = sum(n * n for n in lengths)
    local = sum(local_keys(n, local_attention // 2) for n in lengths)
    attention = 4.0 * h * (n_global * full + n_local * local)
    return {"linear": linear, "attention": attention, "total": linear + attention}


def main(argv: Sequence[str] | None = None) -> int:
    """Print this machine's peak per precision (``python benchmarks/cpu_peak.py``)."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peak-size", type=int, default=1024, help="m = k = n (default 1024)")
    parser.add_argument("--repeats", type=int, default=5, help="best of N (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    peaks = measure_peaks(size=args.peak_size, repeats=args.repeats)
    print(f"GEMM peak, {args.threads} thread(s), per CPU-second (m = k = n = {args.peak_size}):")
    for peak in peaks.values():
        unit = "GOP/s" if peak.precision == "int8" else "GFLOP/s"
        print(f"  {peak.precision:5} {peak.gops:9.1f} {unit:8} ({peak.kernel})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
