"""In-process batching: one ``RerankCompressor`` called concurrently, ``batching`` on vs off.

A web app (FastAPI, LangServe) holds one compressor and serves many users at once. With
``batching=False`` each call runs its own forwards (one at a time, on the scorer's worker
thread); with ``batching=True`` the calls' pairs go through the server's micro-batcher and
share forwards. Both compressors wrap the same loaded scorer (same weights), a random-weight
ModernBERT in the tiny 22-layer shape of ``bench_serve.py --tiny`` (hidden 64), fp32 on
the CPU at ``--threads`` intra-op threads.

Rows, each timed round-robin (``--repeats`` rounds, best kept), wall and process CPU:

- ``32 x acompress_documents``: 32 concurrent calls on one event loop, ``--docs`` (5-20)
  short documents (8-60 words) each; calls/s and the max |Δscore| between the two modes;
- ``32 threads x compress_documents``: the same calls from 32 threads;
- ``lone caller``: ``--lone`` calls one after another (median latency per call).

    python benchmarks/bench_inprocess.py --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_serve import TINY_SHAPE, WINDOW
from harness import add_common_args, apply_threads, print_header

from rerank_plugins import load_scorer
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

Call = tuple[str, list[Any]]  # (query, LangChain documents)


def calls(seed: int, n: int, sizes: tuple[int, int] = (5, 20)) -> list[Call]:
    from langchain_core.documents import Document

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query = random_text(rng, 6)
        docs = [
            Document(page_content=random_text(rng, rng.randint(8, 60)))
            for _ in range(rng.randint(*sizes))
        ]
        out.append((query, docs))
    return out


def scores(answers: Sequence[Sequence[Any]]) -> list[dict[str, float]]:
    return [{d.page_content: d.metadata["relevance_score"] for d in a} for a in answers]


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p, repeats=3)
    p.add_argument("--calls", type=int, default=32, help="concurrent calls")
    p.add_argument("--lone", type=int, default=20, help="sequential calls of the lone caller")
    p.add_argument("--docs", default="5-20", help="documents per call, LOW-HIGH")
    args = p.parse_args(argv)
    if args.smoke:
        args.calls, args.lone, args.repeats = 4, 2, 1
    apply_threads(args)
    from rerank_plugins.langchain import RerankCompressor

    print_header(
        "bench_inprocess",
        lines=[
            f"model: ModernBERT random weights, {TINY_SHAPE.layers} layers, hidden "
            f"{TINY_SHAPE.hidden}, fp32 CPU, {args.threads or 'default'} thread(s); "
            f"{args.calls} calls of {args.docs} short documents (8-60 words)"
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        config = TINY_SHAPE.config(WINDOW)
        directory = make_modernbert_checkpoint(Path(tmp) / "ckpt", config=config, seed=args.seed)
        options = {"threads": args.threads} if args.threads else {}
        scorer = load_scorer(directory, device="cpu", **options)
        modes = {
            "off": RerankCompressor(scorer=scorer, top_n=None),
            "on": RerankCompressor(scorer=scorer, top_n=None, batching=True),
        }
        low, high = (int(x) for x in args.docs.split("-"))
        work = calls(args.seed, args.calls, (low, high))
        lone = calls(args.seed + 1, args.lone, (low, high))
        best: dict[tuple[str, str], tuple[float, float]] = {}
        answers: dict[str, Any] = {}
        lone_ms: dict[str, list[float]] = {"off": [], "on": []}
        lone_cpu: dict[str, float] = {"off": 0.0, "on": 0.0}

        def keep(row: str, mode: str, wall: float, cpu: float) -> None:
            if (row, mode) not in best or wall < best[(row, mode)][0]:
                best[(row, mode)] = (wall, cpu)

        for _ in range(args.repeats):
            for mode, compressor in modes.items():

                async def gathered(c: Any = compressor) -> list[Any]:
                    return await asyncio.gather(*(c.acompress_documents(d, q) for q, d in work))

                wall, cpu, answers[mode] = timed(lambda: asyncio.run(gathered()))
                keep("async", mode, wall, cpu)
                with ThreadPoolExecutor(max_workers=len(work)) as pool:
                    wall, cpu, _ = timed(
                        lambda c=compressor, pool=pool: list(
                            pool.map(lambda qd: c.compress_documents(qd[1], qd[0]), work)
                        )
                    )
                keep("threads", mode, wall, cpu)
            for query, docs in lone:  # interleaved call by call: the load drifts alike
                for mode, compressor in modes.items():
                    wall, cpu, _ = timed(
                        lambda c=compressor, q=query, d=docs: c.compress_documents(d, q)
                    )
                    lone_ms[mode].append(wall * 1e3)
                    lone_cpu[mode] += cpu
        a, b = scores(answers["off"]), scores(answers["on"])
        delta = max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)
        modes["on"].scorer.close()

    print("\n| row | batching=False calls/s (CPU s) | batching=True calls/s (CPU s) | on ÷ off |")
    print("|---|---:|---:|---:|")
    rows = (
        ("async", f"{args.calls} x acompress_documents"),
        ("threads", f"{args.calls} threads x compress_documents"),
    )
    for row, title in rows:
        off, on = best[(row, "off")], best[(row, "on")]
        n = len(work)
        print(
            f"| {title} | {n / off[0]:.1f} ({off[1]:.2f}) | {n / on[0]:.1f} ({on[1]:.2f}) "
            f"| **{off[0] / on[0]:.2f}** |"
        )
    off_ms, on_ms = statistics.median(lone_ms["off"]), statistics.median(lone_ms["on"])
    n_lone = len(lone_ms["on"])
    print(
        f"| lone caller, median ms per call ({n_lone} calls; CPU ms per call) "
        f"| {off_ms:.1f} ({lone_cpu['off'] / n_lone * 1e3:.1f}) "
        f"| {on_ms:.1f} ({lone_cpu['on'] / n_lone * 1e3:.1f}) | {on_ms / off_ms:.2f} "
        "(latency on ÷ off) |"
    )
    print(f"\nmax |Δscore| between the modes over {sum(len(x) for x in a)} documents: {delta:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
