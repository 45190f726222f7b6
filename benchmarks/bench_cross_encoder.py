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
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

QUERY_WORDS = 9  # the pair adds [CLS] [SEP] [SEP]: a 512-token pair holds 500 document words
SPECIALS = 3

# bf16 dense tensor-core peaks (no sparsity), in FLOP/s.
PEAKS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


ENGINE_NAMES = {
    "native": "native",
    "st": "sentence-transformers",
    "transformers": "transformers (padded sdpa)",
}


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


def long_tailed_lengths(rng: random.Random, n: int, *, median: int, longest: int) -> list[int]:
    """Log-normal document lengths (sigma 1.1) around ``median``, the longest set to ``longest``."""
    lengths = [
        max(8, min(longest, round(math.exp(rng.gauss(math.log(median), 1.1))))) for _ in range(n)
    ]
    lengths[rng.randrange(n)] = longest
    return lengths


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS growth may then under-count
        pass


class PeakMemory:
    """Peak memory during a ``with`` block: CUDA peak allocated, or CPU RSS growth (sampled)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self, base: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - base)
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            _trim_heap()  # give freed pages back, so that RSS growth measures this run
            self._thread = threading.Thread(target=self._sample, args=(self._rss(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()


@dataclass
class Run:
    engine: str
    seconds: float  # best wall-clock seconds
    cpu_seconds: float  # process CPU seconds (all threads) of that same run
    logits: list[float]
    peak_bytes: int
    error: str | None = None


@dataclass
class Workload:
    name: str
    query: str
    docs: list[str]
    pair_lengths: list[int] = field(default_factory=list)


def make_workloads(names: str, seed: int) -> list[Workload]:
    """The workloads named in ``names``; each drawn from its own seed, so a subset run
    scores the same documents as a full run."""
    query = random_text(random.Random(seed), QUERY_WORDS)
    room = lambda total: total - QUERY_WORDS - SPECIALS  # noqa: E731
    out = []
    if "a" in names:
        rng = random.Random(seed + 1)
        out.append(
            Workload("a: 100 x 512", query, [random_text(rng, room(512)) for _ in range(100)])
        )
    if "b" in names:
        rng = random.Random(seed + 2)
        lengths = long_tailed_lengths(rng, 100, median=300, longest=room(8192))
        out.append(Workload("b: 100 x long-tail", query, [random_text(rng, n) for n in lengths]))
    if "c" in names:
        rng = random.Random(seed + 3)
        out.append(Workload("c: 1 x 32768", query, [random_text(rng, room(32768))]))
    for w in out:
        w.pair_lengths = [len(d.split()) + QUERY_WORDS + SPECIALS for d in w.docs]
    return out


def time_once(
    name: str, device: torch.device, fn: Callable[[str, list[str]], list[float]], workload: Workload
) -> Run:
    """One timed call: wall and process-CPU seconds, peak memory, the logits."""
    with PeakMemory(device) as mem:
        cpu = time.process_time()
        start = time.perf_counter()
        logits = fn(workload.query, workload.docs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    return Run(name, wall, cpu, logits, mem.peak)


def time_round_robin(
    engines: dict[str, Callable[[str, list[str]], list[float]]],
    device: torch.device,
    workload: Workload,
    rounds: int,
) -> list[Run]:
    """Best-of-``rounds`` runs per engine, every round timing every engine once (so that
    background load on a shared machine spreads over all engines)."""
    best: dict[str, Run] = {}
    for _ in range(rounds):
        for name, fn in engines.items():
            if name in best and best[name].error:
                continue
            try:
                run = time_once(name, device, fn, workload)
            except (RuntimeError, MemoryError) as exc:  # e.g. CUDA out of memory
                run = Run(
                    name, math.nan, math.nan, [], 0, error=f"{type(exc).__name__}: {exc}"[:200]
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            previous = best.get(name)
            if previous is None or run.error or run.seconds < previous.seconds:
                if previous is not None and not run.error:
                    run.peak_bytes = max(run.peak_bytes, previous.peak_bytes)
                best[name] = run
            else:
                previous.peak_bytes = max(previous.peak_bytes, run.peak_bytes)
    return list(best.values())


def build_engines(
    directory: Path, device: torch.device, dtype: torch.dtype, window: int, args: argparse.Namespace
) -> dict[str, Callable[[str, list[str]], list[float]]]:
    from sentence_transformers import CrossEncoder

    native = CrossEncoderScorer(
        directory,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        output="logit",
        engine="native",
        batch_tokens=args.batch_tokens,
    )
    padded = CrossEncoderScorer(
        directory,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        output="logit",
        engine="transformers",
        batch_tokens=args.batch_tokens,
    )
    st = CrossEncoder(
        str(directory),
        device=str(device),
        max_length=window,
        model_kwargs={"attn_implementation": "sdpa", "dtype": dtype},
    )
    identity = torch.nn.Identity()

    def run_st(query: str, docs: list[str]) -> list[float]:
        out = st.predict(
            [(query, d) for d in docs],
            batch_size=args.st_batch_size,
            activation_fn=identity,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return [float(x) for x in out.float().flatten().cpu()]

    engines = {
        "native": lambda q, d: [s.value for s in native.score(q, d)],
        "st": run_st,
        "transformers": lambda q, d: [s.value for s in padded.score(q, d)],
    }
    wanted = args.engines.split(",")
    return {ENGINE_NAMES[k]: fn for k, fn in engines.items() if k in wanted}


def reference_logits(directory: Path, workload: Workload, args: argparse.Namespace) -> list[float]:
    """fp32 transformers (padded sdpa) on the benchmark device: the reference scores."""
    device = torch.device(args.device)
    ref = CrossEncoderScorer(
        directory,
        device=str(device),
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


def fmt_bytes(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def print_table(
    workload: Workload,
    runs: Sequence[Run],
    reference: Sequence[float] | None,
    flops: float,
    device: torch.device,
    args: argparse.Namespace,
    results: list[dict[str, Any]],
) -> Run | None:
    """Print one workload's table and append its rows to ``results``.

    Columns: docs/s and tokens/s (wall clock), our ratio to each engine, docs per
    CPU-second and its ratio, max |Δ| to ``reference`` and peak memory; with a known
    device peak, the roofline fraction of ``flops``. Returns our (``native``) run.
    """
    ours = next((r for r in runs if r.engine == "native" and not r.error), None)
    peak = peak_flops(device, args.peak_tflops)
    n, tokens = len(workload.docs), sum(workload.pair_lengths)
    print(
        f"{'engine':28s} {'docs/s':>8s} {'tokens/s':>9s} {'ours/x':>7s} "
        f"{'docs/cpu-s':>10s} {'ours/x':>7s} {'max|Δ|':>9s} {'peak mem':>10s}"
        + ("  roofline" if peak else "")
    )
    for run in runs:
        if run.error:
            print(f"{run.engine:28s} failed: {run.error}")
            results.append({"workload": workload.name, "engine": run.engine, "error": run.error})
            continue
        delta = (
            max(abs(a - b) for a, b in zip(run.logits, reference, strict=True))
            if reference is not None
            else math.nan
        )
        ratio = run.seconds / ours.seconds if ours else math.nan
        cpu_ratio = run.cpu_seconds / ours.cpu_seconds if ours else math.nan
        line = (
            f"{run.engine:28s} {n / run.seconds:8.2f} {tokens / run.seconds:9,.0f} "
            f"{ratio:7.2f} {n / run.cpu_seconds:10.2f} {cpu_ratio:7.2f} "
            f"{delta:9.2e} {fmt_bytes(run.peak_bytes):>10s}"
        )
        row = {
            "workload": workload.name,
            "engine": run.engine,
            "seconds": run.seconds,
            "cpu_seconds": run.cpu_seconds,
            "docs_per_s": n / run.seconds,
            "tokens_per_s": tokens / run.seconds,
            "ours_over_this": ratio,
            "ours_over_this_cpu": cpu_ratio,
            "max_abs_delta": delta,
            "peak_bytes": run.peak_bytes,
            "gflop": flops / 1e9,
        }
        if peak:
            frac = flops / run.seconds / peak
            line += f"  {frac:8.1%}"
            row["roofline"] = frac
        print(line)
        results.append(row)
    return ours


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
        "--repeats", type=int, default=1, help="rounds; each engine's best round is kept"
    )
    p.add_argument(
        "--baselines-on-c",
        action="store_true",
        help="CPU: also run the baselines on workload c (dense L x L attention: many minutes)",
    )
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak, for the roofline")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--engines", default="native,st,transformers", help="comma-separated subset to time"
    )
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    full = Shape(layers=22, hidden=768, heads=12, intermediate=1152, vocab=50368)
    small = Shape(layers=6, hidden=384, heads=6, intermediate=576, vocab=50368)
    shape = full if cuda else small
    shape.layers = args.layers or shape.layers
    shape.hidden = args.hidden or shape.hidden
    shape.heads = args.heads or shape.heads
    shape.intermediate = args.intermediate or shape.intermediate
    dtype = torch.bfloat16 if cuda else torch.float32
    window = 32768

    print(f"# bench_cross_encoder  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(
        f"# machine: {platform.node()} {platform.machine()} cpus={os.cpu_count()} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    if cuda:
        print(f"# gpu: {torch.cuda.get_device_name(device)}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"# model: ModernBERT random weights, {shape.layers} layers, hidden {shape.hidden}, "
        f"{shape.heads} heads, intermediate {shape.intermediate}, local window "
        f"{shape.local_attention}, global every {shape.global_every}; {dtype}; window {window}"
    )

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config=shape.config(window), seed=args.seed
        )
        engines = build_engines(directory, device, dtype, window, args)
        warm = make_workloads("a", args.seed + 100)[0]
        for fn in engines.values():  # load kernels, allocate pools
            fn(warm.query, warm.docs[:4])
        for workload in make_workloads(args.workloads, args.seed):
            tokens = sum(workload.pair_lengths)
            n = len(workload.docs)
            lengths = sorted(workload.pair_lengths)
            print(
                f"\n## workload {workload.name}: {n} docs, {tokens:,} pair tokens "
                f"(median {lengths[n // 2]}, max {lengths[-1]})"
            )
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
            runs = time_round_robin(chosen, device, workload, args.repeats)
            ref_run = next((r for r in runs if r.engine.startswith("transformers")), None)
            reference: list[float] | None = None
            if ref_run is not None and not ref_run.error and not cuda:
                reference = ref_run.logits  # already fp32 on CPU
            elif cuda or not workload.name.startswith("c"):
                # On CPU the dense fp32 reference over 32K tokens takes many minutes: skipped.
                reference = reference_logits(directory, workload, args)
            flops = sum(pair_flops(shape, length) for length in workload.pair_lengths)
            ours = print_table(workload, runs, reference, flops, device, args, results)
            rate = f"; native {flops / ours.seconds / 1e9:,.1f} GFLOP/s" if ours else ""
            print(
                f"(useful work {flops / 1e9:,.0f} GFLOP = {flops / tokens / 1e9:.3f} "
                f"GFLOP/token{rate})"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
