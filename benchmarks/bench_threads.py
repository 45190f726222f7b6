"""Intra-op threads by forward size: short forwards on one thread vs the configured count.

The engine runs a forward under :data:`~rerank_plugins.local.engine.threads.SERIAL_WORK`
multiply-adds per layer on one intra-op thread, whatever the configured count
(:func:`~rerank_plugins.local.engine.threads.forward_threads`): idle OpenMP threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, set by ``rerank_plugins.local``), and waking one at every
operator costs more than the second thread saves on a short forward. This script measures
that choice against its alternatives, in one process, on the same loaded scorer:

- ``one thread``: every forward at 1 thread (as ``--threads 1`` would configure);
- ``by size``: the engine's rule at the configured count (``--threads``, default: all
  usable CPUs), as shipped;
- ``all threads``: the configured count for every forward (the rule switched off by
  setting the floor to 0 for this row only).

Rows are random-weight ModernBERT checkpoints (``--shapes``: the tiny 22 x 64 shape of
``bench_serve.py --tiny``, 6 x 384, the 22 x 768 gte-reranker-modernbert-base shape)
scoring one call of ``docs x words`` short documents, from a worker thread (as ``ascore``
and the server run them); the three modes alternate ``--repeats`` times, best kept, with
the process CPU time of that call.

    python benchmarks/bench_threads.py                      # ~2 minutes here
    python benchmarks/bench_threads.py --shapes tiny --repeats 9
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import harness
from bench_cross_encoder import SMOKE_SHAPE, Shape
from harness import Column

import rerank_plugins.local  # noqa: F401  (before torch: OpenMP threads wait passively)

SHAPES = {
    "tiny": Shape(layers=22, hidden=64, heads=4, intermediate=96, vocab=50368),
    "small": Shape(layers=6, hidden=384, heads=6, intermediate=1152, vocab=50368),
    "base": Shape(layers=22, hidden=768, heads=12, intermediate=1152, vocab=50368),
}
CALLS = {  # (documents, words each) per shape: short pairs to a merged batch, long documents
    "tiny": [(1, 20), (12, 30), (45, 35), (128, 40), (4, 400), (1, 1500)],
    "small": [(1, 20), (4, 30), (12, 30), (48, 40), (1, 400)],
    "base": [(1, 20), (4, 30), (12, 30), (1, 400)],
}
MODES = ("one thread", "by size", "all threads")
WORDS = "the of and to in is was for on that with as by at from an were are which this".split()


def best_of(repeats: int, modes: dict[str, Callable[[], None]]) -> dict[str, tuple[float, float]]:
    """Each mode's fastest (wall s, CPU s) over ``repeats`` interleaved rounds."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for name, run in modes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            took = (time.perf_counter() - wall, time.process_time() - cpu)
            if name not in best or took[0] < best[name][0]:
                best[name] = took
    return best


def run_in(worker: ThreadPoolExecutor, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` on the worker thread, waited for."""
    worker.submit(fn, *args).result()


def measure(
    name: str, args: argparse.Namespace, worker: ThreadPoolExecutor, rng: random.Random
) -> list[dict[str, Any]]:
    """The rows of one shape: each call timed in the three modes, interleaved."""
    from rerank_plugins import load_scorer
    from rerank_plugins.local.engine import threads as th
    from rerank_plugins.testing import make_modernbert_checkpoint

    shape = SMOKE_SHAPE if args.smoke else SHAPES[name]
    floor = th.SERIAL_WORK
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / name, config=shape.config(8192), seed=args.seed
        )
        scorer = load_scorer(directory, device="cpu", threads=args.threads)
        count = th.configured_threads().threads  # type: ignore[union-attr]

        def call(threads: int, serial_floor: int, texts: list[str]) -> None:
            th.configure_threads(threads)  # the count large forwards use
            th.SERIAL_WORK = serial_floor
            try:
                scorer.score("a query about things", texts)
            finally:
                th.SERIAL_WORK = floor
                th.configure_threads(count)

        for docs, words in CALLS[name][:2] if args.smoke else CALLS[name]:
            texts = [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(docs)]
            settings = {
                "one thread": (1, floor),
                "by size": (count, floor),
                "all threads": (count, 0),
            }
            modes: dict[str, Callable[[], None]] = {}
            for mode, (threads, serial_floor) in settings.items():
                modes[mode] = functools.partial(run_in, worker, call, threads, serial_floor, texts)
            for run in modes.values():  # warm-up: traces, first allocations
                run()
            best = best_of(1 if args.smoke else args.repeats, modes)
            row: dict[str, Any] = {
                "shape": f"{name} {shape.layers}x{shape.hidden}",
                "docs": docs,
                "words": words,
                "threads": count,
            }
            for mode in MODES:
                row[f"{mode} ms"] = best[mode][0] * 1e3
                row[f"{mode} cpu ms"] = best[mode][1] * 1e3
            row["all ÷ by size"] = best["all threads"][0] / best["by size"][0]
            row["one ÷ by size"] = best["one thread"][0] / best["by size"][0]
            rows.append(row)
            print(f"# {row['shape']}: {docs} x {words} words done", flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    harness.add_common_args(p, repeats=5)
    p.add_argument(
        "--shapes", default="tiny,small,base", help="comma-separated: " + ",".join(SHAPES)
    )
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if any(s not in SHAPES for s in shapes) or not shapes:
        p.error(f"--shapes: choose from {', '.join(SHAPES)}")
    if args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--repeats and --threads must be positive")
    harness.print_header("bench_threads", lines=[f"shapes: {', '.join(shapes)}; fp32 CPU"])
    rng = random.Random(args.seed)
    with ThreadPoolExecutor(1, thread_name_prefix="bench-forward") as worker:
        rows = [row for name in shapes for row in measure(name, args, worker, rng)]
    columns = [
        Column("shape", "shape", 12, "", left=True),
        Column("docs", "docs", 5, "d"),
        Column("words", "words", 6, "d"),
        Column("threads", "threads", 8, "d"),
        *(Column(f"{m} ms", f"{m} ms (CPU)", 20, "") for m in MODES),
        Column("all ÷ by size", "all ÷ by size", 14, ".2f"),
        Column("one ÷ by size", "one ÷ by size", 14, ".2f"),
    ]
    shown = [
        row | {f"{m} ms": f"{row[f'{m} ms']:.1f} ({row[f'{m} cpu ms']:.1f})" for m in MODES}
        for row in rows
    ]
    print()
    print(harness.format_table(shown, columns, markdown=True))
    harness.write_json(args.json, "bench_threads", rows, args=args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
