"""CPU precision modes of the native cross-encoder against sentence-transformers' CPU backends.

One process, one random-weight ModernBERT checkpoint (the shape of
``bench_cross_encoder.py``), the same documents for every engine:

- ours: ``CrossEncoderScorer`` with ``dtype`` ``float32``, ``bfloat16`` and ``int8``
  (``--modes``), default CPU token budget;
- sentence-transformers ``CrossEncoder`` (``max_length`` 8192, batch ``--st-batch-size``)
  with ``backend="torch"`` fp32 and, per ``--baselines``: ``onnx`` (exported by optimum),
  ``onnx-int8`` (``export_dynamic_quantized_onnx_model``, avx512_vnni config),
  ``openvino`` and ``openvino-int8`` (``export_static_quantized_openvino_model`` needs a
  calibration set from the hub: unavailable offline; weight-only int8 through
  optimum-intel's ``quantization_config={"bits": 8}`` instead).

ONNX and OpenVINO need optimum versions that cannot share one environment here
(optimum-onnx 0.1 pins optimum 2.1 and transformers < 4.58, optimum-intel 2.2 pins
optimum 2.3): run the script once per environment; ``torch`` fp32 and our modes run in
both, so every table holds its own anchors.

Columns: docs/s (wall) and docs per CPU-second, the fastest-ours ratio to each engine on
both clocks, peak RSS growth, and fidelity against our fp32 probabilities: max |Δp|,
Kendall tau over all documents and top-10 agreement. Engines run round-robin,
``--repeats`` rounds, best kept on ``--clock``.

    PYTHONPATH=. /work/venv15/bin/python benchmarks/bench_cpu_modes.py --threads 1 \\
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
    elif kind in ("onnx", "openvino"):
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
    elif kind == "openvino-int8":
        model = CrossEncoder(
            str(directory),
            device="cpu",
            max_length=WINDOW,
            backend="openvino",
            model_kwargs={"quantization_config": {"bits": 8}, **kw},
        )
    else:
        raise SystemExit(f"unknown baseline {kind!r}")
    return st_engine(model, batch_size)


def build_ours(directory: Path, dtype: str) -> Engine:
    scorer = CrossEncoderScorer(directory, device="cpu", dtype=dtype)
    return lambda q, d: [s.value for s in scorer.score(q, d)]


COLUMNS = [
    Column("engine", "engine", 24, "s", left=True),
    Column("docs_per_s", "docs/s", 8),
    Column("fastest_over_this", "best/x", 7),
    Column("docs_per_cpu_s", "docs/cpu-s", 10),
    Column("fastest_over_this_cpu", "best/x", 7),
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
    harness.add_common_args(p, repeats=2, clock=True)
    args = p.parse_args(argv)
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
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt",
            config=config(args.layers, args.hidden, args.heads, args.intermediate),
            seed=args.seed,
        )
        engines: dict[str, Engine] = {}
        failed: dict[str, str] = {}
        for mode in args.modes.split(","):
            engines[f"ours {mode}"] = build_ours(directory, mode)
        for kind in args.baselines.split(","):
            try:
                engines[f"st {kind}"] = build_st(directory, kind, args.st_batch_size, Path(tmp))
            except Exception as exc:  # record why a baseline cannot run here, keep going
                failed[f"st {kind}"] = f"{type(exc).__name__}: {exc}"[:300]
                logger.warning("baseline %s failed to build: %s", kind, failed[f"st {kind}"])
        workloads = harness.pair_workloads(args.workloads, args.seed, specials=SPECIALS, **sizes)
        warm = workloads[0]
        for fn in engines.values():
            # The two shortest documents: warming up must not hit a baseline's memory limit
            # (a failure is recorded in the timed rounds, not raised here).
            fn(warm.query, sorted(warm.docs, key=len)[:2])
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
            ref = runs.get("ours float32")
            want = ref.value if ref is not None and not ref.error else None
            n = len(workload.docs)
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
                }
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
