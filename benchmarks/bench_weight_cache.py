"""What a second ``RerankCompressor(model=X)`` costs, with and without the weight cache.

The pattern this measures: LangChain / LlamaIndex code that builds its reranker per
request. One mid-size random-weight ModernBERT checkpoint in the real HF layout (8 layers,
hidden 512, vocab 50,368: about 53 M parameters, 200 MiB of fp32 safetensors). Each round
runs in a fresh subprocess (so that resident memory starts from the same state) and, in
one process, builds:

1. the first ``RerankCompressor(model=X)`` (weights loaded from disk);
2. a second one on the same model: **shared** weights (the default);
3. a third one with ``model_kwargs={"cache": False}``: the baseline, a private copy
   (what every new instance cost before the cache).

For each it records wall and process-CPU time of the constructor and the growth of the
process's memory once the instance has scored a short query (so that every weight page
is touched): PSS (proportional set size, from ``/proc/self/smaps_rollup``; counts a page
shared by two mappings once, so it is the physical cost) and RSS, after ``gc.collect()``
and ``malloc_trim``. fp32 CPU weights are memory-mapped safetensors (a private copy of the
same file costs little physical memory); ``--dtype bfloat16`` converts them on load, as
moving them to a GPU copies them: the case where a private copy costs the full size.
The order of 2 and 3 alternates between rounds; the best (lowest) of ``--rounds`` is kept
per column. Printed: the table and the ratios to the first instance (the issue's target:
the second adds under 5 % of the first one's memory and load time).

    PYTHONPATH=. /work/venv/bin/python benchmarks/bench_weight_cache.py --rounds 3
    PYTHONPATH=. /work/venv/bin/python benchmarks/bench_weight_cache.py --rounds 3 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MID_SIZE = {
    "vocab_size": 50368,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
}


def memory() -> tuple[int, int]:
    """(PSS, RSS) in bytes, after freeing what can be freed."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/smaps_rollup") as f:
        pss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
    return pss, rss


def build(model: str, options: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    pss0, rss0 = memory()
    wall, cpu = time.perf_counter(), time.process_time()
    compressor = RerankCompressor(model=model, model_kwargs=options)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    compressor.compress_documents([Document(page_content="w1 w2 w3")], "w1")  # touch weights
    pss1, rss1 = memory()
    return compressor, {
        "wall_s": wall,
        "cpu_s": cpu,
        "pss_mib": (pss1 - pss0) / 2**20,
        "rss_mib": (rss1 - rss0) / 2**20,
    }


DTYPE = "float32"


def one_round(model: str, unshared_first: bool) -> dict[str, dict[str, float]]:
    import torch

    torch.set_num_threads(1)
    from rerank_plugins.langchain import RerankCompressor  # import cost outside the timings

    del RerankCompressor
    keep = []
    base = {"device": "cpu", "dtype": DTYPE}
    first, out = build(model, base)
    keep.append(first)
    order = ["unshared", "shared"] if unshared_first else ["shared", "unshared"]
    results = {"first": out}
    for name in order:
        options = base if name == "shared" else {**base, "cache": False}
        compressor, results[name] = build(model, options)
        keep.append(compressor)
    assert keep[0].scorer.classifier is keep[1 + order.index("shared")].scorer.classifier
    assert keep[0].scorer.classifier is not keep[1 + order.index("unshared")].scorer.classifier
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--checkpoint", help="reuse this checkpoint directory")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--round", help=argparse.SUPPRESS)  # internal: run one round
    args = parser.parse_args()
    global DTYPE
    DTYPE = args.dtype
    if args.round:
        model, flag = args.round.rsplit("|", 1)
        print(json.dumps(one_round(model, flag == "1")))
        return

    tmp = tempfile.TemporaryDirectory()
    model = args.checkpoint
    if model is None:
        from rerank_plugins.testing import make_modernbert_checkpoint

        model = str(make_modernbert_checkpoint(Path(tmp.name) / "mid", config=MID_SIZE))
    size = sum(p.stat().st_size for p in Path(model).glob("*.safetensors")) / 2**20
    print(f"checkpoint: {model} ({size:.0f} MiB of safetensors)")
    rounds = []
    for i in range(args.rounds):
        done = subprocess.run(
            [sys.executable, __file__, "--dtype", args.dtype, "--round", f"{model}|{i % 2}"],
            capture_output=True,
            text=True,
            check=True,
        )
        rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
    best = {
        name: {
            k: min(r[name][k] for r in rounds) for k in ("wall_s", "cpu_s", "pss_mib", "rss_mib")
        }
        for name in ("first", "shared", "unshared")
    }
    first = best["first"]
    print(f"{args.dtype}, best of {args.rounds} rounds (fresh process each; torch 1 thread)")
    print(
        "| instance | load wall s | load cpu s | PSS growth MiB | RSS growth MiB "
        "| wall ÷ 1st | cpu ÷ 1st | PSS ÷ 1st |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in (
        ("first", "1st RerankCompressor(model=X)"),
        ("shared", "2nd, shared weights (default)"),
        ("unshared", "2nd, cache=False (baseline)"),
    ):
        row = best[name]
        print(
            f"| {label} | {row['wall_s']:.3f} | {row['cpu_s']:.3f} | {row['pss_mib']:.1f} | "
            f"{row['rss_mib']:.1f} | {row['wall_s'] / first['wall_s']:.1%} | "
            f"{row['cpu_s'] / first['cpu_s']:.1%} | {row['pss_mib'] / first['pss_mib']:.1%} |"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
