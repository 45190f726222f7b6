"""CPU precision modes of the native cross-encoder against sentence-transformers' CPU backends.

One process, one random-weight ModernBERT checkpoint (the shape of
``bench_cross_encoder.py``), the same documents for every engine:

- ours: ``CrossEncoderScorer`` with ``dtype`` ``float32``, ``bfloat16`` and ``int8``
  (``--modes``), default CPU token budget;
- sentence-transformers ``CrossEncoder`` (``max_length`` 8192, batch ``--st-batch-size``)
  with ``backend="torch"`` fp32 and, per ``--baselines``: ``onnx`` (exported by optimum),
  ``onnx-int8`` (``export_dynamic_quantized_onnx_model``, avx512_vnni config),
  ``openvino`` and ``openvino-int8`` (``export_static_quantized_openvino_model`` needs a
  calibration set from the hub: unavailable offline; weight-only int8 instead;
  optimum-intel 2.2 cannot export ModernBERT, so :func:`build_openvino` converts it with
  OpenVINO's PyTorch front end).

ONNX and OpenVINO need optimum versions that cannot share one environment here
(optimum-onnx 0.1 pins optimum 2.1 and transformers < 4.58, optimum-intel 2.2 pins
optimum 2.3): run the script once per environment; ``torch`` fp32 and our modes run in
both, so every table holds its own anchors.

Columns: docs/s (wall) and docs per CPU-second, the fastest-ours ratio to each engine on
both clocks, the useful work per CPU-second (G(FL)OP per CPU-second, FLOPs counted from the
config and the real pair token counts) and its fraction of this CPU's measured
single-thread GEMM peak in the engine's precision (``cpu_peak.py`` states the formulas and
the kernels timed; per CPU-second, so 1-thread and all-core runs read alike), peak RSS
growth, and fidelity against our fp32 probabilities: max |Δp|, Kendall tau over all
documents and top-10 agreement. Engines run round-robin, ``--repeats`` rounds, best kept
on ``--clock``.

Precision of each engine's GEMMs (the peak it is held against): ours ``float32`` and
sentence-transformers ``torch``/``onnx``: fp32; ours ``bfloat16`` and ``openvino``
(OpenVINO infers in bf16 by default on AVX512-BF16/AMX CPUs): bf16; ours ``int8`` and
``onnx-int8``: int8; ``openvino-int8`` is weight-only (bf16 matmuls: the bf16 peak).

ONNX needs optimum-onnx (transformers < 4.58), OpenVINO optimum-intel (transformers 5.5):
two virtualenvs that see the project's packages through a ``.pth`` line (RESULTS.md):

    PYTHONPATH=. /work/venv-onnx/bin/python benchmarks/bench_cpu_modes.py --threads 1 \\
        --repeats 2 --clock cpu --baselines torch,onnx,onnx-int8
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cpu_peak
import harness
import torch
from harness import Column

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint

logger = logging.getLogger(__name__)

SPECIALS = 3
WINDOW = 8192
Engine = Callable[[str, list[str]], list[float]]


def config(layers: int, hidden: int, heads: int, intermediate: int) -> dict[str, Any]:
    return {
        "vocab_size": 50368,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "global_attn_every_n_layers": 3,
        "local_attention": 128,
        "max_position_embeddings": WINDOW,
        "initializer_range": 0.02,
        "classifier_pooling": "mean",
    }


def sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            p = (a[i] - a[j]) * (b[i] - b[j])
            s += (p > 0) - (p < 0)
    return s / (n * (n - 1) / 2)


def top_k(values: Sequence[float], k: int = 10) -> set[int]:
    return set(sorted(range(len(values)), key=lambda i: -values[i])[:k])


def st_engine(model: Any, batch_size: int) -> Engine:
    identity = torch.nn.Identity()

    def run(query: str, docs: list[str]) -> list[float]:
        out = model.predict(
            [(query, d) for d in docs],
            batch_size=batch_size,
            activation_fn=identity,
            show_progress_bar=False,
        )
        return [sigmoid(float(x)) for x in list(out)]

    return run


def runtime_kwargs(kind: str) -> dict[str, Any]:
    """Give ONNX Runtime and OpenVINO torch's thread count (they keep their own pools)."""
    threads = torch.get_num_threads()
    if kind.startswith("onnx"):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return {"session_options": options}
    if kind.startswith("openvino"):
        return {"ov_config": {"INFERENCE_NUM_THREADS": str(threads)}}
    return {}


def build_st(directory: Path, kind: str, batch_size: int, tmp: Path) -> Engine:
    from sentence_transformers import CrossEncoder

    kw = runtime_kwargs(kind)
    if kind == "torch":
        model = CrossEncoder(str(directory), device="cpu", max_length=WINDOW)
    elif kind in ("openvino", "openvino-int8"):
        model = build_openvino(directory, kind, kw, tmp)
    elif kind == "onnx":
        model = CrossEncoder(
            str(directory), device="cpu", max_length=WINDOW, backend=kind, model_kwargs=kw
        )
    elif kind == "onnx-int8":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        exported = tmp / "onnx-export"
        base = CrossEncoder(str(directory), device="cpu", max_length=WINDOW, backend="onnx")
        base.save_pretrained(str(exported))
        export_dynamic_quantized_onnx_model(base, "avx512_vnni", str(exported))
        model = CrossEncoder(
            str(exported),
            device="cpu",
            max_length=WINDOW,
            backend="onnx",
            model_kwargs={"file_name": "onnx/model_qint8_avx512_vnni.onnx", **kw},
        )
    else:
        raise SystemExit(f"unknown baseline {kind!r}")
    return st_engine(model, batch_size)


def build_openvino(directory: Path, kind: str, kw: dict[str, Any], tmp: Path) -> Any:
    """sentence-transformers' OpenVINO backend; where optimum-intel cannot export ModernBERT
    (``ValueError: Trying to export a modernbert model, that is a custom or unsupported
    architecture``), the IR comes from OpenVINO's own PyTorch front end instead
    (``torch.export`` of transformers' model with dynamic batch and length, then
    ``openvino.convert_model``), saved where the backend looks for it. ``openvino-int8``
    is weight-only int8 (``nncf.compress_weights``, what optimum-intel's ``{"bits": 8}``
    does): the matmuls still run in OpenVINO's inference precision."""
    from sentence_transformers import CrossEncoder

    options: dict[str, Any] = dict(kw)
    if kind == "openvino-int8":
        options["quantization_config"] = {"bits": 8}
    try:
        return CrossEncoder(
            str(directory),
            device="cpu",
            max_length=WINDOW,
            backend="openvino",
            model_kwargs=options,
        )
    except ValueError as exc:
        logger.warning(
            "optimum-intel export failed (%s); converting with OpenVINO's front end", str(exc)[:160]
        )
    target = tmp / f"ov-{kind}"
    if not target.exists():
        _convert_openvino(directory, target, int8=kind == "openvino-int8")
    return CrossEncoder(
        str(target), device="cpu", max_length=WINDOW, backend="openvino", model_kwargs=kw
    )


def _convert_openvino(directory: Path, target: Path, *, int8: bool) -> None:
    import shutil

    import openvino
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(directory, target)
    hf = AutoModelForSequenceClassification.from_pretrained(str(directory)).eval()

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hf = hf

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
            return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits

    batch, length = (
        torch.export.Dim("batch", min=1, max=256),
        torch.export.Dim("length", min=2, max=WINDOW),
    )
    example = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    exported = torch.export.export(
        Logits(), example, dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length})
    )
    ov_model = openvino.convert_model(exported)
    for port, name in zip(ov_model.inputs, ("input_ids", "attention_mask"), strict=True):
        port.get_tensor().set_names({name})
    ov_model.outputs[0].get_tensor().set_names({"logits"})
    if int8:
        import nncf

        ov_model = nncf.compress_weights(ov_model)
    (target / "openvino").mkdir()
    openvino.save_model(ov_model, str(target / "openvino" / "openvino_model.xml"))


def build_ours(directory: Path, dtype: str, batch_tokens: int | None = None) -> Engine:
    scorer = CrossEncoderScorer(directory, device="cpu", dtype=dtype, batch_tokens=batch_tokens)
    return lambda q, d: [s.value for s in scorer.score(q, d)]


PRECISION = {
    "ours float32": "fp32",
    "ours bfloat16": "bf16",
    "ours int8": "int8",
    "st torch": "fp32",
    "st onnx": "fp32",
    "st onnx-int8": "int8",
    "st openvino": "bf16",
    "st openvino-int8": "bf16",  # weight-only int8: the matmuls run in bf16
}


def single_thread_peaks(size: int) -> dict[str, cpu_peak.Peak]:
    """The GEMM peaks at one thread (per CPU-second), restoring torch's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cpu_peak.measure_peaks(size=size)
    finally:
        torch.set_num_threads(threads)


def flops_of(args: argparse.Namespace, lengths: Sequence[int]) -> float:
    return cpu_peak.forward_flops(
        lengths,
        layers=args.layers,
        hidden=args.hidden,
        intermediate=args.intermediate,
        global_every=3,
        local_attention=128,
    )["total"]


COLUMNS = [
    Column("engine", "engine", 24, "s", left=True),
    Column("docs_per_s", "docs/s", 8),
    Column("fastest_over_this", "best/x", 7),
    Column("docs_per_cpu_s", "docs/cpu-s", 10),
    Column("fastest_over_this_cpu", "best/x", 7),
    Column("gops_per_cpu_s", "GOP/cpu-s", 9, ".1f"),
    Column("fraction_of_peak", "of peak", 7, ".1%"),
    Column("peak_mib", "peak MiB", 9, ",.0f"),
    Column("max_delta_p", "max|Δp|", 9, ".1e"),
    Column("kendall_tau", "tau", 7, ".4f"),
    Column("top10", "top10", 6, "d"),
]


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--intermediate", type=int, default=576)
    p.add_argument("--workloads", default="ab")
    p.add_argument("--modes", default="float32,bfloat16,int8")
    p.add_argument("--baselines", default="torch,onnx,onnx-int8")
    p.add_argument("--st-batch-size", type=int, default=32)
    p.add_argument("--docs", type=int, default=100, help="documents per workload")
    p.add_argument(
        "--batch-tokens",
        default="",
        help="our token budget per forward, or several comma-separated (one engine each, "
        "named '@N'); default: the engine's (4,096 on the CPU)",
    )
    p.add_argument("--peak-size", type=int, default=1024, help="m = k = n of the peak GEMMs")
    harness.add_common_args(p, repeats=2, clock=True)
    args = p.parse_args(argv)
    try:
        budgets: list[int | None] = [int(b) for b in args.batch_tokens.split(",") if b] or [None]
    except ValueError:
        p.error(f"--batch-tokens: integers, got {args.batch_tokens!r}")
    if any(b is not None and b <= 0 for b in budgets):
        p.error("--batch-tokens must be positive")
    harness.apply_threads(args)
    sizes: dict[str, int] = {"docs": args.docs}
    if args.smoke:
        args.layers, args.hidden, args.heads, args.intermediate = 2, 32, 2, 48
        args.repeats = 1
        sizes = {"docs": 6, "fixed": 64, "median": 32, "longest": 256}
    harness.print_header(
        "bench_cpu_modes",
        lines=[
            f"model: ModernBERT random weights, {args.layers} layers, hidden {args.hidden}, "
            f"{args.heads} heads, intermediate {args.intermediate}; st batch "
            f"{args.st_batch_size}; clock {args.clock}"
        ],
    )
    peaks = single_thread_peaks(64 if args.smoke else args.peak_size)
    for peak in peaks.values():
        print(
            f"# single-thread GEMM peak {peak.precision}: {peak.gops:,.1f} G(FL)OP per "
            f"CPU-second ({peak.kernel}, {args.peak_size}^3)"
        )
    results: list[dict[str, Any]] = [
        {"peak": p.precision, "kernel": p.kernel, "gops_per_cpu_s": p.gops} for p in peaks.values()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt",
            config=config(args.layers, args.hidden, args.heads, args.intermediate),
            seed=args.seed,
        )
        engines: dict[str, Engine] = {}
        failed: dict[str, str] = {}
        for mode in args.modes.split(","):
            for budget in budgets:  # one engine per token budget ("@N" when several)
                name = f"ours {mode}" if len(budgets) == 1 else f"ours {mode} @{budget}"
                engines[name] = build_ours(directory, mode, budget)
        for kind in args.baselines.split(","):
            try:
                engines[f"st {kind}"] = build_st(directory, kind, args.st_batch_size, Path(tmp))
            except Exception as exc:  # record why a baseline cannot run here, keep going
                failed[f"st {kind}"] = f"{type(exc).__name__}: {exc}"[:300]
                logger.warning("baseline %s failed to build: %s", kind, failed[f"st {kind}"])
        workloads = harness.pair_workloads(args.workloads, args.seed, specials=SPECIALS, **sizes)
        warm = workloads[0]
        for fn in engines.values():
            # The eight shortest documents: enough tokens for our CPU fast path to compile
            # here (its first-call cost is measured apart, RESULTS.md), few enough that
            # warming up cannot hit a baseline's memory limit (a failure is recorded in
            # the timed rounds, not raised here).
            fn(warm.query, sorted(warm.docs, key=len)[:8])
        for workload in workloads:
            print(f"\n## workload {workload.name}: {harness.describe(workload)}")
            runs = harness.round_robin(
                {
                    name: (lambda fn=fn, w=workload: fn(w.query, w.docs))
                    for name, fn in engines.items()
                },
                args.repeats,
                clock=args.clock,
                memory="cpu",
                # ONNX Runtime's out-of-memory is its own exception type (not RuntimeError):
                # record it as that engine's failure (dense 8,192-token attention) and go on.
                catch=(Exception,),
            )
            ref = next((r for n, r in runs.items() if n.split(" @")[0] == "ours float32"), None)
            want = ref.value if ref is not None and not ref.error else None
            if want is not None:
                ordered = sorted(want)
                print(
                    f"fp32 probabilities: min {ordered[0]:.4f}, median "
                    f"{ordered[len(ordered) // 2]:.4f}, max {ordered[-1]:.4f} (the spread "
                    "the fidelity columns are measured on)"
                )
            n = len(workload.docs)
            flops = flops_of(args, workload.pair_lengths)
            print(f"useful work: {flops / 1e9:,.1f} GFLOP per pass (cpu_peak.forward_flops)")
            ours = [r for name, r in runs.items() if name.startswith("ours") and not r.error]
            faithful = [
                r
                for r in ours
                if want is None
                or (
                    max(abs(a - b) for a, b in zip(r.value, want, strict=True)) <= 2e-2
                    and kendall_tau(r.value, want) >= 0.99
                )
            ]
            best = min(faithful, key=lambda r: r.seconds, default=None)
            best_cpu = min(faithful, key=lambda r: r.cpu_seconds, default=None)
            rows = []
            for name, run in runs.items():
                if run.error:
                    rows.append({"workload": workload.name, "engine": name, "error": run.error})
                    continue
                row: dict[str, Any] = {
                    "workload": workload.name,
                    "engine": name,
                    "seconds": run.seconds,
                    "cpu_seconds": run.cpu_seconds,
                    "docs_per_s": n / run.seconds,
                    "docs_per_cpu_s": n / run.cpu_seconds,
                    "fastest_over_this": harness.ratio(run.seconds, best.seconds if best else None),
                    "fastest_over_this_cpu": harness.ratio(
                        run.cpu_seconds, best_cpu.cpu_seconds if best_cpu else None
                    ),
                    "peak_mib": run.peak_bytes / 2**20,
                    "gops_per_cpu_s": flops / run.cpu_seconds / 1e9,
                }
                precision = PRECISION.get(name.split(" @")[0])
                if precision in peaks:
                    row["precision"] = precision
                    row["fraction_of_peak"] = row["gops_per_cpu_s"] / peaks[precision].gops
                if want is not None:
                    row["max_delta_p"] = max(
                        abs(a - b) for a, b in zip(run.value, want, strict=True)
                    )
                    row["kendall_tau"] = kendall_tau(run.value, want)
                    row["top10"] = len(top_k(run.value) & top_k(want))
                rows.append(row)
            for name, error in failed.items():
                rows.append({"workload": workload.name, "engine": name, "error": error})
            print(harness.format_table(rows, COLUMNS))
            if best is not None:
                print(
                    f"(best/x: the fastest of our faithful modes, {best.engine} on wall "
                    f"and {best_cpu.engine if best_cpu else '-'} on CPU time)"
                )
            results.extend(rows)
    harness.write_json(args.json, "bench_cpu_modes", results, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
