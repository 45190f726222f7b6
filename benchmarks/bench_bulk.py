"""Bulk scoring: a plain loop, ``rerank-plugins score`` and Ray Data, on the same pairs.

One process drives all three paths over one Parquet file of ``--pairs`` (query, document)
pairs, ``--docs-per-query`` documents per query, document lengths long-tailed
(log-normal, median ``--median-words`` words, capped at ``--max-words``; one word is one
token of the test tokenizer), scored by one random-weight ModernBERT checkpoint in the real
HF layout:

1. ``loop``: ``scorer.score(query, documents)`` per query, in a Python loop, in memory;
2. ``score``: :func:`rerank_plugins.bulk.score_file` (what ``rerank-plugins score`` runs),
   Parquet in, Parquet shards out, in this process, with the same loaded scorer;
3. ``ray``: :func:`rerank_plugins.ray.score_dataset` on a local Ray (``ray.init`` once,
   not timed) with ``--actors`` actors, ``read_parquet`` -> score -> ``write_parquet``;
   each run starts its actors and loads one model per actor (that is part of the cost).

(1) and (2) run at one torch thread in this process; each Ray actor has one thread.
Paths are timed round-robin for ``--repeats`` rounds and the best (wall) round kept.
Printed per path: rows/s and tokens/s (wall), CPU seconds and peak RSS growth, the ratio
to ``score``, and max |Δ score| of (2) and (3) against (1). The harness' ``round_robin``
counts this process only; Ray's work happens in other processes (raylet, workers,
actors), so here a sampler sums CPU time and RSS over this process and all its
descendants. Arguments, header, lengths, table and ``--json`` come from ``harness.py``.

CPU, a few minutes on 2 cores::

    python benchmarks/bench_bulk.py --pairs 20000
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rerank_plugins import load_scorer
from rerank_plugins.bulk import score_file
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 192,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "local_attention": 128,
    "global_attn_every_n_layers": 3,
    "initializer_range": 0.02,
}


@dataclass
class Run:
    seconds: float
    cpu_seconds: float
    peak_bytes: int
    scores: dict[int, float]


class Sampler:
    """Peak RSS (sum over ``pids()``) and CPU time per process, sampled every 5 ms."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids
        self.base_rss = self._rss()
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> int:
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids():
                try:
                    proc = psutil.Process(pid)
                    total += proc.memory_info().rss
                    times = proc.cpu_times()
                    self.cpu[pid] = times.user + times.system
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total - self.base_rss)
            time.sleep(0.005)

    def __enter__(self) -> Sampler:
        self.cpu_before = {pid: self._cpu(pid) for pid in self.pids()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    def cpu_seconds(self) -> float:
        return sum(v - self.cpu_before.get(pid, 0.0) for pid, v in self.cpu.items())


def this_process() -> list[int]:
    return [os.getpid()]


def this_process_and_ray() -> list[int]:
    me = psutil.Process()
    return [me.pid, *(c.pid for c in me.children(recursive=True))]


def make_pairs(
    n: int, per_query: int, median: int, longest: int, seed: int
) -> list[dict[str, Any]]:
    """``n`` pairs, ``per_query`` per query, document lengths from the harness' long tail."""
    rng = random.Random(seed)
    lengths = harness.long_tailed_lengths(rng, n, median=median, longest=longest)
    return [
        {
            "id": i,
            "query": f"w{(i // per_query) % 300} w{(i // per_query * 7) % 300}",
            "text": random_text(rng, words),
        }
        for i, words in enumerate(lengths)
    ]


def run_loop(scorer: Any, rows: list[dict[str, Any]]) -> dict[int, float]:
    groups: dict[str, list[int]] = {}
    for r in rows:
        groups.setdefault(r["query"], []).append(r["id"])
    out: dict[int, float] = {}
    for query, ids in groups.items():
        for i, s in zip(ids, scorer.score(query, [rows[i]["text"] for i in ids]), strict=True):
            out[i] = s.value
    return out


def run_score(scorer: Any, source: Path, work: Path, shard_rows: int) -> dict[int, float]:
    out = work / "score-out"
    shutil.rmtree(out, ignore_errors=True)
    score_file(source, out, model=scorer, shard_rows=shard_rows, progress=False)
    table = pq.read_table(out, columns=["id", "score"])
    return dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(), strict=True))


def run_ray(model: Path, source: Path, work: Path, actors: int, batch: int) -> dict[int, float]:
    import ray

    from rerank_plugins.ray import score_dataset

    out = work / "ray-out"
    shutil.rmtree(out, ignore_errors=True)
    ds = ray.data.read_parquet(str(source))
    scored = score_dataset(
        ds,
        model=str(model),
        device="cpu",
        num_cpus=0.5,  # fractional, so the read and write tasks still get a CPU
        concurrency=actors,
        batch_size=batch,
    )
    scored.write_parquet(str(out))
    table = pq.read_table(out, columns=["id", "score"])
    return dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(), strict=True))


TABLE = [
    harness.Column("path", "path", 40, "s", left=True),
    harness.Column("rows_per_s", "rows/s", 8, ",.0f"),
    harness.Column("tokens_per_s", "tokens/s", 9, ",.0f"),
    harness.Column("seconds", "wall s", 7, ".1f"),
    harness.Column("cpu_seconds", "CPU s", 7, ".1f"),
    harness.Column("peak_bytes", "peak RSS growth", 15, harness.fmt_bytes),
    harness.Column("score_over_this", "score ÷ it (wall)", 9, ".2f"),
    harness.Column("max_abs_delta", "max |Δ| vs loop", 9, ".1e"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--docs-per-query", type=int, default=100)
    parser.add_argument("--median-words", type=int, default=60)
    parser.add_argument("--max-words", type=int, default=2000)
    parser.add_argument("--shard-rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=500, help="Ray rows per batch")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--paths", default="loop,score,ray")
    harness.add_common_args(parser, repeats=2, threads=False)
    args = parser.parse_args()
    if args.smoke:
        args.pairs, args.docs_per_query, args.max_words, args.repeats = 300, 50, 200, 1
        args.shard_rows, args.batch_size = 100, 100

    import ray

    torch.set_num_threads(1)  # paths (1) and (2) on one core; each Ray actor has one thread
    harness.print_header("bench_bulk")
    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    try:
        model = make_modernbert_checkpoint(work / "model", config=CONFIG)
        rows = make_pairs(
            args.pairs, args.docs_per_query, args.median_words, args.max_words, args.seed
        )
        source = work / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
        tokens = sum(len(r["text"].split()) + len(r["query"].split()) + 3 for r in rows)
        scorer = load_scorer(str(model), device="cpu")
        paths = args.paths.split(",")
        if "ray" in paths:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
        jobs: dict[str, Callable[[], dict[int, float]]] = {
            "loop": lambda: run_loop(scorer, rows),
            "score": lambda: run_score(scorer, source, work, args.shard_rows),
            "ray": lambda: run_ray(model, source, work, args.actors, args.batch_size),
        }
        best: dict[str, Run] = {}
        for round_ in range(args.repeats):
            for name in paths:
                harness.trim_heap()
                pids = this_process_and_ray if name == "ray" else this_process
                with Sampler(pids) as sampler:
                    started = time.perf_counter()
                    scores = jobs[name]()
                    seconds = time.perf_counter() - started
                run = Run(seconds, sampler.cpu_seconds(), sampler.peak, scores)
                print(f"# round {round_} {name}: {seconds:.2f} s", flush=True)
                if len(scores) != len(rows):
                    raise SystemExit(f"{name} returned {len(scores)} rows for {len(rows)}")
                if name in best:
                    run.peak_bytes = max(run.peak_bytes, best[name].peak_bytes)
                if name not in best or run.seconds < best[name].seconds:
                    best[name] = run
        if "ray" in paths:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lengths = sorted(len(r["text"].split()) for r in rows)
    print(
        f"# {len(rows):,} pairs, {len(rows) // args.docs_per_query} queries, {tokens:,} pair "
        f"tokens; document words median {lengths[len(lengths) // 2]}, p99 "
        f"{lengths[int(len(lengths) * 0.99)]}, max {lengths[-1]}; ray {ray.__version__}; "
        f"best of {args.repeats}"
    )
    names = {
        "loop": "(1) Python loop over scorer.score",
        "score": "(2) rerank-plugins score, 1 process",
        "ray": f"(3) Ray Data, {args.actors} actors x 1 thread",
    }
    reference, base = best.get("loop"), best.get("score")
    results = [
        {
            "path": names[name],
            "rows_per_s": len(rows) / run.seconds,
            "tokens_per_s": tokens / run.seconds,
            "seconds": run.seconds,
            "cpu_seconds": run.cpu_seconds,
            "peak_bytes": run.peak_bytes,
            "score_over_this": harness.ratio(base.seconds, run.seconds) if base else None,
            "max_abs_delta": (
                max(abs(v - reference.scores[i]) for i, v in run.scores.items())
                if reference
                else None
            ),
        }
        for name, run in best.items()
    ]
    print(harness.format_table(results, TABLE, markdown=True))
    harness.write_json(args.json, "bench_bulk", results, args=args, extra={"rows": len(rows)})


if __name__ == "__main__":
    main()
