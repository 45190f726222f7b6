"""Local (sliding-window) layers of short-sequence batches: banded vs blocked attention.

One process, one random-weight ModernBERT checkpoint in the tiny 22-layer shape of
``bench_serve.py --tiny`` (hidden 64, 4 heads, local window 128, i.e. keys within 64
tokens), fp32 CPU. The same scorer scores the same batch twice per round:

- ``blocked``: every local layer on the blocked path (queries in blocks attend to the
  ``block + 2 * window`` keys around them), as before the banded path existed;
- ``auto``: the engine's choice: a batch whose buckets compute fewer scores padded with a
  band mask than blocked runs banded (``attention._banded_is_cheaper``).

Workloads: batches of documents of 8-60, 60-200 and 150-400 words (the query adds ~8
tokens). Printed: CPU milliseconds per batch (best of ``--repeats``, round-robin),
``blocked ÷ auto``, and the max |Δ score| between the two.

    python benchmarks/bench_local_attention.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import harness
from bench_serve import TINY_SHAPE, WINDOW
from harness import Column

from rerank_plugins import load_scorer
from rerank_plugins.local.engine import attention
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

WORKLOADS = [(8, 60, 48), (8, 60, 8), (60, 200, 24), (150, 400, 12)]
QUERY = "what is the best way to rank documents"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(p, repeats=5)
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = p.parse_args(argv)
    harness.apply_threads(args)
    harness.print_header("bench_local_attention")
    chosen = attention._banded_is_cheaper
    workloads = WORKLOADS[:2] if args.smoke else WORKLOADS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config=TINY_SHAPE.config(WINDOW), seed=args.seed
        )
        scorer = load_scorer(str(directory), device="cpu", cache=False)
        rng = random.Random(args.seed)
        for low, high, n in workloads:
            docs = [random_text(rng, rng.randint(low, high)) for _ in range(n)]

            def run(banded: bool | None, docs: list[str] = docs) -> list[float]:
                attention._banded_is_cheaper = chosen if banded is None else lambda b, w: banded  # type: ignore[assignment]
                try:
                    return [s.value for s in scorer.score(QUERY, docs)]
                finally:
                    attention._banded_is_cheaper = chosen

            runs = harness.round_robin(
                {"blocked": lambda: run(False), "auto": lambda: run(None)},
                1 if args.smoke else args.repeats,
                clock="cpu",
            )
            blocked, auto = runs["blocked"], runs["auto"]
            delta = max(abs(a - b) for a, b in zip(blocked.value, auto.value, strict=True))
            rows.append(
                {
                    "workload": f"{n} docs of {low}-{high} words",
                    "blocked_ms": blocked.cpu_seconds * 1e3,
                    "auto_ms": auto.cpu_seconds * 1e3,
                    "ratio": harness.ratio(blocked.cpu_seconds, auto.cpu_seconds),
                    "max_abs_delta": delta,
                }
            )
    columns = [
        Column("workload", "workload", 24, "", left=True),
        Column("blocked_ms", "blocked CPU ms", 15, ".1f"),
        Column("auto_ms", "auto CPU ms", 12, ".1f"),
        Column("ratio", "blocked ÷ auto", 15, ".2f"),
        Column("max_abs_delta", "max |Δ score|", 14, ".1e"),
    ]
    print(harness.format_table(rows, columns, markdown=args.markdown))
    if args.json:
        harness.write_json(args.json, "bench_local_attention", rows, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
