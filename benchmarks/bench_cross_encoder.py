"""Cross-encoder throughput: the native ModernBERT engine against the baselines.

One process, one random-weight checkpoint in the real ModernBERT layout, the same
documents for every engine:

- ``native``: ``CrossEncoderScorer`` on the native engine (packed, windowed attention);
- ``sentence-transformers``: ``CrossEncoder`` with ``max_length`` = the model window
  (it sorts by length and pads each batch of ``--st-batch-size`` pairs to its longest);
- ``transformers``: ``CrossEncoderScorer(engine="transformers")``, i.e. transformers'
  padded ``AutoModelForSequenceClassification`` forward with sdpa attention, batched by a
  padded token budget.

Workloads: (a) 1 query x 100 documents of 512 tokens; (b) 1 query x 100 documents with
long-tailed lengths (log-normal, median ~300, the longest at 8,192); (c) one 32,768-token
document (on CPU the baselines run on it only with ``--baselines-on-c``).

Printed per engine: docs/s and tokens/s (wall clock), docs per process-CPU-second (robust
when other jobs share the machine), our speed ratio to it on both clocks, max |Δ logit|
to the fp32 reference (transformers, padded sdpa, fp32) and peak memory (CUDA: peak
allocated; CPU: peak RSS growth over the run, sampled every 5 ms after ``malloc_trim``).
On CUDA also the fraction of the bf16 dense roofline reached, from the FLOP count of
:func:`pair_flops`. Engines are timed round-robin, ``--repeats`` rounds, best kept.

CPU (small config, a few minutes)::

    .venv/bin/python benchmarks/bench_cross_encoder.py

GPU (full ModernBERT-base shape, bf16)::

    python benchmarks/bench_cross_encoder.py --device cuda

``--smoke``: a tiny model and workloads, one round, every engine (seconds; checks that the
script runs). Timing, workloads, tables and JSON come from ``harness.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import harness
import torch
from harness import Column, Run, Workload

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint

QUERY_WORDS = 9  # the pair adds [CLS] [SEP] [SEP]: a 512-token pair holds 500 document words
SPECIALS = 3

# bf16 dense tensor-core peaks (no sparsity), in FLOP/s.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


ENGINE_NAMES = {
    "native": "native",
    "st": "sentence-transformers",
    "transformers": "transformers (padded sdpa)",
}

Engine = Callable[[str, list[str]], list[float]]


@dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    local_attention: int = 128
    global_every: int = 3

    def config(self, max_positions: int) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "global_attn_every_n_layers": self.global_every,
            "local_attention": self.local_attention,
            "max_position_embeddings": max_positions,
            "initializer_range": 0.02,
            "classifier_pooling": "mean",
        }


# Tiny shape and workloads of --smoke (every script's check that it still runs).
SMOKE_SHAPE = Shape(layers=2, hidden=32, heads=2, intermediate=48, vocab=50368)
SMOKE_WORKLOADS: dict[str, int] = {
    "docs": 6,
    "fixed": 64,
    "median": 32,
    "longest": 256,
    "single": 512,
}


def pair_flops(shape: Shape, length: int) -> float:
    """Useful forward FLOPs for one pair of ``length`` tokens (multiply-add = 2 FLOPs).

    Per layer: the Wqkv, Wo, Wi and MLP Wo matmuls, ``2 * L * (3H^2 + H^2 + 2HI + IH)``,
    plus attention ``4 * L * keys * H`` (scores and weighted sum) where ``keys`` is ``L`` on
    global layers and ``min(L, local_attention + 1)`` on local ones. Embeddings, norms,
    RoPE, softmax and the head are left out (under 1%).
    """
    h, i = shape.hidden, shape.intermediate
    linear = 2 * length * (4 * h * h + 3 * h * i)
    total = 0.0
    for layer in range(shape.layers):
        is_global = layer % shape.global_every == 0
        keys = length if is_global else min(length, shape.local_attention + 1)
        total += linear + 4 * length * keys * h
    return total


def st_engine(model: Any, batch_size: int) -> Engine:
    """sentence-transformers ``CrossEncoder.predict`` returning raw logits."""
    identity = torch.nn.Identity()

    def run(query: str, docs: list[str]) -> list[float]:
        out = model.predict(
            [(query, d) for d in docs],
            batch_size=batch_size,
            activation_fn=identity,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return [float(x) for x in out.float().flatten().cpu()]

    return run


def scorer_engine(scorer: CrossEncoderScorer) -> Engine:
    return lambda q, d: [s.value for s in scorer.score(q, d)]


def build_engines(
    directory: Path, device: torch.device, dtype: torch.dtype, window: int, args: argparse.Namespace
) -> dict[str, Engine]:
    from sentence_transformers import CrossEncoder

    def scorer(engine: Literal["native", "transformers"]) -> CrossEncoderScorer:
        return CrossEncoderScorer(
            directory,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            output="logit",
            engine=engine,
            batch_tokens=args.batch_tokens,
        )

    st = CrossEncoder(
        str(directory),
        device=str(device),
        max_length=window,
        model_kwargs={"attn_implementation": "sdpa", "dtype": dtype},
    )
    engines = {
        "native": scorer_engine(scorer("native")),
        "st": st_engine(st, args.st_batch_size),
        "transformers": scorer_engine(scorer("transformers")),
    }
    wanted = args.engines.split(",")
    return {ENGINE_NAMES[k]: fn for k, fn in engines.items() if k in wanted}


def reference_logits(directory: Path, workload: Workload, args: argparse.Namespace) -> list[float]:
    """fp32 transformers (padded sdpa) on the benchmark device: the reference scores."""
    ref = CrossEncoderScorer(
        directory,
        device=args.device,
        dtype="float32",
        output="logit",
        engine="transformers",
        batch_tokens=args.batch_tokens,
    )
    return [s.value for s in ref.score(workload.query, workload.docs)]


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():  # "H100 PCIe" is checked before "H100"
        if key in name:
            return value
    return None


def time_engines(
    engines: dict[str, Engine], device: torch.device, workload: Workload, rounds: int, **kw: Any
) -> list[Run]:
    """:func:`harness.round_robin` of every engine on ``workload`` (wall clock, peak memory;
    an out-of-memory engine becomes a failed run). ``kw`` goes to ``round_robin``."""
    calls = {
        name: (lambda fn=fn: fn(workload.query, workload.docs)) for name, fn in engines.items()
    }
    cuda = device.type == "cuda"
    runs = harness.round_robin(
        calls,
        rounds,
        sync=harness.cuda_sync(device),
        memory=device.type,
        on_error=torch.cuda.empty_cache if cuda else None,
        **kw,
    )
    return list(runs.values())


TABLE = [
    Column("engine", "engine", 28, "s", left=True),
    Column("docs_per_s", "docs/s", 8, ".2f"),
    Column("tokens_per_s", "tokens/s", 9, ",.0f"),
    Column("ours_over_this", "ours/x", 7, ".2f"),
    Column("docs_per_cpu_s", "docs/cpu-s", 10, ".2f"),
    Column("ours_over_this_cpu", "ours/x", 7, ".2f"),
    Column("max_abs_delta", "max|Δ|", 9, ".2e"),
    Column("peak_bytes", "peak mem", 10, harness.fmt_bytes),
]


def table_rows(
    workload: Workload,
    runs: Sequence[Run],
    reference: Sequence[float] | None,
    flops: float,
    peak: float | None,
) -> tuple[list[dict[str, Any]], Run | None]:
    """One workload's result rows and our (``native``) run.

    Columns: docs/s and tokens/s (wall clock), our ratio to each engine, docs per
    CPU-second and its ratio, max |Δ| to ``reference`` and peak memory; with a known
    device peak ``peak``, the roofline fraction of ``flops``.
    """
    ours = next((r for r in runs if r.engine == "native" and not r.error), None)
    n, tokens = len(workload.docs), sum(workload.pair_lengths)
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.error:
            rows.append({"workload": workload.name, "engine": run.engine, "error": run.error})
            continue
        delta = (
            max(abs(a - b) for a, b in zip(run.value, reference, strict=True))
            if reference is not None
            else math.nan
        )
        row = {
            "workload": workload.name,
            "engine": run.engine,
            "seconds": run.seconds,
            "cpu_seconds": run.cpu_seconds,
            "docs_per_s": n / run.seconds,
            "tokens_per_s": tokens / run.seconds,
            "ours_over_this": harness.ratio(run.seconds, ours.seconds if ours else None),
            "docs_per_cpu_s": n / run.cpu_seconds,
            "ours_over_this_cpu": harness.ratio(
                run.cpu_seconds, ours.cpu_seconds if ours else None
            ),
            "max_abs_delta": delta,
            "peak_bytes": run.peak_bytes,
            "gflop": flops / 1e9,
        }
        if peak:
            row["roofline"] = flops / run.seconds / peak
        rows.append(row)
    return rows, ours


def print_rows(rows: list[dict[str, Any]], peak: float | None) -> None:
    roofline = [Column("roofline", "roofline", 9, ".1%")] if peak else []
    print(harness.format_table(rows, [*TABLE, *roofline]))


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workloads", default="abc", help="any of a, b, c")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--st-batch-size", type=int, default=32)
    p.add_argument(
        "--baselines-on-c",
        action="store_true",
        help="CPU: also run the baselines on workload c (dense L x L attention: many minutes)",
    )
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak, for the roofline")
    p.add_argument(
        "--engines", default="native,st,transformers", help="comma-separated subset to time"
    )
    harness.add_common_args(p, repeats=1)
    args = p.parse_args(argv)
    harness.apply_threads(args)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    full = Shape(layers=22, hidden=768, heads=12, intermediate=1152, vocab=50368)
    small = Shape(layers=6, hidden=384, heads=6, intermediate=576, vocab=50368)
    shape = SMOKE_SHAPE if args.smoke else full if cuda else small
    shape.layers = args.layers or shape.layers
    shape.hidden = args.hidden or shape.hidden
    shape.heads = args.heads or shape.heads
    shape.intermediate = args.intermediate or shape.intermediate
    dtype = torch.bfloat16 if cuda else torch.float32
    sizes = SMOKE_WORKLOADS if args.smoke else {}
    window = 1024 if args.smoke else 32768
    if args.smoke:
        args.repeats = 1
        args.baselines_on_c = True  # tiny: dense attention over 512 tokens is cheap

    harness.print_header(
        "bench_cross_encoder",
        device=args.device,
        lines=[
            f"model: ModernBERT random weights, {shape.layers} layers, hidden {shape.hidden}, "
            f"{shape.heads} heads, intermediate {shape.intermediate}, local window "
            f"{shape.local_attention}, global every {shape.global_every}; {dtype}; "
            f"window {window}"
        ],
    )

    peak = peak_flops(device, args.peak_tflops)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config=shape.config(window), seed=args.seed
        )
        engines = build_engines(directory, device, dtype, window, args)
        warm = harness.pair_workloads(
            "a", args.seed + 100, specials=SPECIALS, query_words=QUERY_WORDS, **sizes
        )[0]
        for fn in engines.values():  # load kernels, allocate pools
            fn(warm.query, warm.docs[:4])
        workloads = harness.pair_workloads(
            args.workloads, args.seed, specials=SPECIALS, query_words=QUERY_WORDS, **sizes
        )
        for workload in workloads:
            tokens = sum(workload.pair_lengths)
            print(f"\n## workload {workload.name}: {harness.describe(workload)}")
            chosen = {}
            for name, fn in engines.items():
                if (
                    workload.name.startswith("c")
                    and name != "native"
                    and not (cuda or args.baselines_on_c)
                ):
                    print(f"{name:28s} skipped (dense attention over 32K tokens; --baselines-on-c)")
                    continue
                chosen[name] = fn
            runs = time_engines(chosen, device, workload, args.repeats)
            ref_run = next((r for r in runs if r.engine.startswith("transformers")), None)
            reference: list[float] | None = None
            if ref_run is not None and not ref_run.error and not cuda:
                reference = ref_run.value  # already fp32 on CPU
            elif cuda or not workload.name.startswith("c"):
                # On CPU the dense fp32 reference over 32K tokens takes many minutes: skipped.
                reference = reference_logits(directory, workload, args)
            flops = sum(pair_flops(shape, length) for length in workload.pair_lengths)
            rows, ours = table_rows(workload, runs, reference, flops, peak)
            print_rows(rows, peak)
            results += rows
            rate = f"; native {flops / ours.seconds / 1e9:,.1f} GFLOP/s" if ours else ""
            print(
                f"(useful work {flops / 1e9:,.0f} GFLOP = {flops / tokens / 1e9:.3f} "
                f"GFLOP/token{rate})"
            )
    harness.write_json(args.json, "bench_cross_encoder", results, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
