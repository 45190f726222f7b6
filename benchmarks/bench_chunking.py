"""Past the window: one very long document scored in 8,192-token windows, against truncation.

One process, one random-weight checkpoint in the gte-reranker-modernbert-base layout
(ModernBERT, 8,192 positions, global attention every third layer, ±64 local windows),
scaled in width (``--hidden``; 22 layers as the real model). For each document length
(``--lengths``, default 8,192 to 100,000 tokens) ``CrossEncoderScorer`` runs with
``overflow="chunk"`` (windows of all the room beside the query, no overlap, max over the
windows) and ``overflow="truncate"`` (the first window only), timed round-robin with the
peak memory of each call (CPU: peak RSS growth, sampled; CUDA: peak allocated).

Printed per length and policy: windows, wall and CPU seconds, CPU-microseconds per token
(flat when time is linear in length), peak memory (bounded by the token budget of one
forward, whatever the length: windows are batched like any pairs), and the time relative
to truncating. CPU, one thread (a few minutes)::

    python benchmarks/bench_chunking.py --threads 1

``--smoke``: 2 layers, short documents (seconds; checks that the script runs).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from bench_cross_encoder import Shape
from harness import Column

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

QUERY = "w1 w2 w3 w4 w5 w6 w7 w8 w9"
WINDOW = 8192

TABLE = [
    Column("length", "doc tokens", 10, ",d"),
    Column("policy", "policy", 9, "", left=True),
    Column("windows", "windows", 7, "d"),
    Column("wall_s", "wall s", 8, ".2f"),
    Column("cpu_s", "CPU s", 8, ".2f"),
    Column("cpu_us_per_token", "CPU µs/tok", 10, ".1f"),
    Column("peak_mib", "peak MiB", 8, ".0f"),
    Column("vs_truncate", "vs trunc", 8, lambda x: f"{x:.1f}x"),
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--hidden", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--layers", type=int, default=22, help="encoder layers (default 22)")
    p.add_argument(
        "--lengths",
        default="8192,25000,50000,100000",
        help="document lengths in tokens, comma separated",
    )
    p.add_argument("--batch-tokens", type=int, default=16384)
    harness.add_common_args(p, repeats=1, clock=True)
    args = p.parse_args(argv)
    harness.apply_threads(args)
    lengths = [int(x) for x in args.lengths.split(",")]
    layers, window = args.layers, WINDOW
    if args.smoke:
        lengths, layers, window = [300, 900], 2, 256
    shape = Shape(
        layers=layers,
        hidden=args.hidden,
        heads=max(1, args.hidden // 16),
        intermediate=args.hidden * 3 // 2,
        vocab=320,
        local_attention=128,
    )
    memory = "cuda" if args.device.startswith("cuda") else "cpu"
    harness.print_header(
        "bench_chunking",
        device=args.device,
        lines=[
            f"model: ModernBERT cross-encoder, random weights, {shape.layers} layers, hidden "
            f"{shape.hidden}, {shape.heads} heads, window {window}, local ±64, global every 3; "
            f"float32; batch_tokens {args.batch_tokens}; best of {args.repeats} on the "
            f"{args.clock} clock"
        ],
    )
    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config={**shape.config(window), "initializer_range": 0.2}
        )

        def scorer(overflow: str) -> CrossEncoderScorer:
            return CrossEncoderScorer(
                directory,
                device=args.device,
                dtype="float32",
                overflow=overflow,  # type: ignore[arg-type]
                batch_tokens=args.batch_tokens,
                output="logit",
            )

        chunk, truncate = scorer("chunk"), scorer("truncate")
        for each in (chunk, truncate):
            each.score(QUERY, ["w1 w2"])
        for length in lengths:
            doc = random_text(rng, length)
            runs = harness.round_robin(
                {
                    "chunk": lambda d=doc: chunk.score(QUERY, [d]),
                    "truncate": lambda d=doc: truncate.score(QUERY, [d]),
                },
                args.repeats,
                clock=args.clock,
                sync=harness.cuda_sync(args.device),
                memory=memory,
                catch=(),
            )
            base = runs["truncate"].on(args.clock)
            for policy, run in runs.items():
                (score,) = run.value
                rows.append(
                    {
                        "length": length,
                        "policy": policy,
                        "windows": score.chunks or 1,
                        "wall_s": run.seconds,
                        "cpu_s": run.cpu_seconds,
                        "cpu_us_per_token": 1e6 * run.cpu_seconds / (score.tokens or length),
                        "peak_mib": run.peak_bytes / 2**20,
                        "vs_truncate": run.on(args.clock) / base,
                    }
                )
    print()
    print(harness.format_table(rows, TABLE))
    harness.write_json(args.json, "bench_chunking", rows, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
