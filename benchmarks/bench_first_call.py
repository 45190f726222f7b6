"""The first calls of a fresh process on the CPU: when the fast path's compilation is paid.

Each row is one fresh Python process (as a notebook kernel or a one-off CLI run is) that
loads a random-weight ModernBERT checkpoint and makes ``--calls`` calls of ``--docs``
documents (80-220 words) on the CPU (``--dtype``, fp32 by default), timing each call's
wall clock. The rows differ
in ``RERANK_PLUGINS_COMPILE``:

- ``eager`` (``0``): no compilation at all;
- ``inline``: the fast path compiles at the first large forward (the behaviour before the
  background compilation, and what the other benchmarks use);
- ``auto`` (the default): the first large forward runs eagerly, the second starts the
  compilation in a background thread, later calls run fused once it is done;

each with a **cold** Inductor cache (a fresh ``TORCHINDUCTOR_CACHE_DIR``) and then a
**warm** one (the same directory, the next process). ``process s`` is the child's whole
life, interpreter start to exit (an exit waits for a compilation still running). The
default shape is the gte-reranker-modernbert-base one (22 layers, hidden 768, its
vocabulary; a ~750 MB checkpoint written to a temporary directory); ``--shape small`` is
6 layers of 384.

    python benchmarks/bench_first_call.py                  # ~3 minutes here
    python benchmarks/bench_first_call.py --calls 8 --docs 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
from bench_cross_encoder import SMOKE_SHAPE, Shape
from harness import Column

SHAPES = {  # the real checkpoints' trunks: gte-reranker-modernbert-base, and a small one
    "base": Shape(layers=22, hidden=768, heads=12, intermediate=1152, vocab=50368),
    "small": Shape(layers=6, hidden=384, heads=6, intermediate=576, vocab=50368),
}
MODES = {"eager": "0", "inline": "inline", "auto": "auto"}
QUERY = "what is the capital of france"


def child(directory: str, calls: int, docs: int, seed: int, dtype: str) -> None:
    """One fresh process: load, then ``calls`` calls; JSON on stdout."""
    import random

    start = time.perf_counter()
    from rerank_plugins import load_scorer
    from rerank_plugins.testing import random_text

    scorer = load_scorer(directory, device="cpu", dtype=dtype, cache=False)
    loaded = time.perf_counter() - start
    rng = random.Random(seed)
    texts = [random_text(rng, rng.randint(80, 220)) for _ in range(docs)]
    seconds = []
    for _ in range(calls):
        begin = time.perf_counter()
        scorer.score(QUERY, texts)
        seconds.append(time.perf_counter() - begin)
    print(json.dumps({"load": loaded, "calls": seconds}))


def run_child(directory: Path, mode: str, cache: Path, args: argparse.Namespace) -> dict:
    env = {
        **os.environ,
        "RERANK_PLUGINS_COMPILE": MODES[mode],
        "TORCHINDUCTOR_CACHE_DIR": str(cache),
    }
    command = [sys.executable, __file__, "--child", str(directory)]
    command += ["--calls", str(args.calls), "--docs", str(args.docs), "--seed", str(args.seed)]
    command += ["--dtype", args.dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    result["process"] = seconds  # start to exit (an exit waits for a running compilation)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    harness.add_common_args(p, repeats=None)
    p.add_argument("--calls", type=int, default=6, help="calls per process")
    p.add_argument("--docs", type=int, default=20, help="documents per call")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or int8")
    p.add_argument(
        "--shape",
        choices=["base", "small"],
        default="base",
        help="base: 22 layers, hidden 768; small: 6 layers, hidden 384",
    )
    p.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.calls < 1 or args.docs < 1:
        p.error("--calls and --docs take positive integers")
    if args.smoke:
        args.calls, args.docs = 2, 3
    harness.apply_threads(args)
    if args.child:
        child(args.child, args.calls, args.docs, args.seed, args.dtype)
        return 0
    harness.print_header("bench_first_call")
    from rerank_plugins.testing import make_modernbert_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt",
            config=(SMOKE_SHAPE if args.smoke else SHAPES[args.shape]).config(8192),
        )
        for mode in MODES:
            cache = Path(tmp) / f"inductor-{mode}"
            for state in ("cold", "warm") if mode != "eager" else ("-",):
                result = run_child(directory, mode, cache, args)
                calls = result.get("calls", [])
                row = {"mode": mode, "cache": state, "load_s": result.get("load"), **result}
                row.update({f"call{i + 1}": s for i, s in enumerate(calls)})
                row["total_s"] = sum(calls) if calls else None
                rows.append(row)
    columns = [Column("mode", "mode", 7, "", left=True), Column("cache", "cache", 6, "", left=True)]
    columns.append(Column("load_s", "load s", 7, ".1f"))
    columns += [Column(f"call{i + 1}", f"call {i + 1} s", 9, ".1f") for i in range(args.calls)]
    columns.append(Column("total_s", "calls total s", 14, ".1f"))
    columns.append(Column("process", "process s", 10, ".1f"))
    print(harness.format_table(rows, columns, markdown=args.markdown))
    if args.json:
        harness.write_json(args.json, "bench_first_call", rows, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
