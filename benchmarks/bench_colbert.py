"""Late-interaction reranking: ColBERTScorer (cold and warm cache) against the baselines.

Workload: 1 query x 1,000 candidates of about 300 tokens (GTE-ModernColBERT's
``document_length``), on one random-weight checkpoint in GTE-ModernColBERT-v1's layout
(the real tokenizer and configs from the shared fixtures when they are there, else the
word tokenizer). The trunk is scaled down on the CPU (``--shape small``: hidden 128,
4 layers, ±64-token local windows, global every 3rd layer); ``--shape full`` is the real
768-wide, 22-layer trunk (for a GPU).

Engines, all on the same checkpoint, documents and query:

- ``ours cold``: ``ColBERTScorer.score`` with an empty document-vector cache (tokenise,
  packed forward by token budget, projection, MaxSim);
- ``ours warm``: the same call again: every document's vectors come from the cache, only
  the query is encoded;
- ``loop``: LlamaIndex ``ColbertRerank``'s shape: one transformers ``ModernBertModel``
  forward per document (sdpa, fp32, ``inference_mode``), then the Dense projection,
  normalisation, skiplist and MaxSim of that document (PyLate's encoding, so the scores
  are comparable);
- ``pylate`` (with ``--pylate-python``, PyLate's virtualenv): ``ColBERT.encode`` of the
  query and the documents (batch 32, fp32) + ``rank.rerank``; ``pylate warm``:
  ``rank.rerank`` on vectors encoded beforehand.

Printed: seconds (median of the runs), documents/s, the speed-up over the loop, and
max |Δscore| against the loop (and against PyLate's per-document MaxSim).

CPU (small shape, a few minutes; one thread per engine is steadier on a shared machine)::

    .venv/bin/python benchmarks/bench_colbert.py --threads 1 \\
        --pylate-python integration_tests/.pylate/.venv/bin/python

GPU (full shape, bf16)::

    python benchmarks/bench_colbert.py --device cuda --shape full

``--smoke``: 8 documents, one cold and one warm run (seconds; checks the script runs).
Timing, the table and ``--json`` come from ``harness.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from harness import Column

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "shared" / "fixtures"

SHAPES: dict[str, dict[str, Any]] = {
    "small": {
        "hidden_size": 128,
        "intermediate_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "global_attn_every_n_layers": 3,
        "local_attention": 128,
        "initializer_range": 0.02,
    },
    "full": {
        "hidden_size": 768,
        "intermediate_size": 1152,
        "num_hidden_layers": 22,
        "num_attention_heads": 12,
        "global_attn_every_n_layers": 3,
        "local_attention": 128,
        "initializer_range": 0.02,
    },
}


# --- PyLate, run in its own virtualenv (imports nothing from rerank_plugins) -----------


def pylate_worker(job_path: str, out_path: str) -> None:
    import torch
    from pylate import models, rank

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    model = models.ColBERT(
        job["checkpoint"], device=job["device"], model_kwargs={"dtype": torch.float32}
    )
    query, docs = job["query"], job["documents"]
    ids = list(range(len(docs)))

    def sync() -> None:
        if job["device"] == "cuda":
            torch.cuda.synchronize()

    def full() -> list[dict[str, Any]]:
        q = model.encode([query], is_query=True, convert_to_numpy=False)
        d = model.encode(docs, is_query=False, convert_to_numpy=False, batch_size=32)
        out = rank.rerank(documents_ids=[ids], queries_embeddings=q, documents_embeddings=[d])
        sync()
        return out[0]

    model.encode(docs[:32], is_query=False, batch_size=32)  # warm-up
    times, ranked = [], []
    for _ in range(job["runs"]):
        start = time.perf_counter()
        ranked = full()
        times.append(time.perf_counter() - start)
    q = model.encode([query], is_query=True, convert_to_numpy=False)
    d = model.encode(docs, is_query=False, convert_to_numpy=False, batch_size=32)
    warm = []
    for _ in range(job["warm_runs"]):
        start = time.perf_counter()
        rank.rerank(documents_ids=[ids], queries_embeddings=q, documents_embeddings=[d])
        sync()
        warm.append(time.perf_counter() - start)
    exact = [float((v.float() @ q[0].float().T).amax(dim=0).sum()) for v in d]
    by_id = {int(r["id"]): float(r["score"]) for r in ranked}
    Path(out_path).write_text(
        json.dumps(
            {
                "seconds": times,
                "warm_seconds": warm,
                "rerank": [by_id[i] for i in ids],
                "exact": exact,
            }
        )
    )


# --- ours and the loop ------------------------------------------------------------------


def make_texts(directory: Path, n: int, *, seed: int) -> tuple[str, list[str]]:
    """A query and ``n`` documents of 270-297 content tokens (under 300 with the specials)."""
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("\u0120") and t[1:].isalpha())
    if not words:  # the word tokenizer
        words = sorted(t for t in vocab if t.startswith("w") and t[1:].isdigit())
    words = [w for w in words if len(w) >= 3][:20000]

    def text(n_tokens: int) -> str:
        chosen = [rng.choice(words) for _ in range(n_tokens)]
        out = " ".join(chosen)
        while len(tokenizer.encode(out, add_special_tokens=False).ids) > n_tokens:
            chosen.pop()
            out = " ".join(chosen)
        return out

    query = text(12)
    return query, [text(rng.randint(270, 297)) for _ in range(n)]


def loop_scores(directory: Path, scorer: Any, query: str, docs: Sequence[str]) -> list[float]:
    """LlamaIndex ColbertRerank's shape: one transformers forward per document."""
    import torch
    import transformers

    model = (
        transformers.ModernBertModel.from_pretrained(
            str(directory), attn_implementation="sdpa", dtype=torch.float32
        )
        .to(scorer.device)
        .eval()
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    projection = scorer.projection
    skip = torch.tensor(sorted(scorer.skiplist_ids), device=scorer.device)

    def vectors(text: str, prefix: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(text.strip(), truncation=True, max_length=length - 1)
        ids = enc["input_ids"]
        ids = torch.tensor([[ids[0], prefix, *ids[1:]]], device=scorer.device)
        hidden = model(input_ids=ids).last_hidden_state[0]
        return torch.nn.functional.normalize(projection(hidden.float()), dim=-1), ids[0]

    out = []
    with torch.inference_mode():
        q, _ = vectors(query, scorer.query_prefix_id, scorer.query_length)
        for doc in docs:
            d, ids = vectors(doc, scorer.document_prefix_id, scorer.document_length)
            d = d[~torch.isin(ids, skip)]
            out.append(float((d @ q.T).amax(dim=0).sum()))
    return out


def machine(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


TABLE = [
    Column("engine", "engine", left=True, fmt=""),
    Column("seconds", "seconds (median)", fmt=".4f"),
    Column("worst_seconds", "worst", fmt=".3f"),
    Column("docs_per_s", "docs/s", fmt=",.0f"),
    Column("speedup_vs_loop", "speed-up vs loop", fmt=lambda x: f"{x:.1f}x"),
]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="timed runs of ours (cold)")
    parser.add_argument("--warm-runs", type=int, default=10)
    parser.add_argument("--loop-documents", type=int, default=None, help="loop on a subset")
    parser.add_argument("--pylate-python", default=None, help="python of PyLate's virtualenv")
    parser.add_argument("--pylate-worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    harness.add_common_args(parser, repeats=None)
    args = parser.parse_args(argv)
    if args.pylate_worker:
        pylate_worker(*args.pylate_worker)
        return
    if args.smoke:
        args.documents, args.runs, args.warm_runs = 8, 1, 1

    import torch

    harness.apply_threads(args)
    from rerank_plugins.local.colbert import ColBERTScorer
    from rerank_plugins.testing import make_colbert_checkpoint

    fixtures = FIXTURES if (FIXTURES / "lightonai__GTE-ModernColBERT-v1").is_dir() else None
    root = Path(tempfile.mkdtemp(prefix="bench-colbert-"))
    checkpoint = make_colbert_checkpoint(
        root / "colbert", config=SHAPES[args.shape], fixtures=fixtures, seed=args.seed
    )
    query, docs = make_texts(checkpoint, args.documents, seed=args.seed + 1)
    scorer = ColBERTScorer(checkpoint, device=args.device, dtype="auto")
    device = scorer.device

    sync = harness.cuda_sync(device)

    scorer.score(query, docs[:32])  # warm-up (allocator, kernels)
    assert scorer.vector_cache is not None

    def cold() -> Any:
        assert scorer.vector_cache is not None
        scorer.vector_cache.clear()
        return scorer.score(query, docs)

    # Consecutive runs, not round-robin: "warm" needs the cache that "cold" clears.
    cold_runs = harness.time_calls("cold", cold, args.runs, sync=sync)
    warm_runs = harness.time_calls(
        "warm", lambda: scorer.score(query, docs), args.warm_runs, sync=sync
    )
    cold_times, cold_scores = [r.seconds for r in cold_runs], cold_runs[-1].value
    warm_times, warm_scores = [r.seconds for r in warm_runs], warm_runs[-1].value
    assert [s.value for s in warm_scores] == [s.value for s in cold_scores]
    tokens = [s.tokens - scorer.encode_query(query).tokens for s in cold_scores]
    truncated = sum(s.truncated for s in cold_scores)

    n_loop = args.loop_documents or len(docs)
    loop_run = harness.time_call(
        "loop", lambda: loop_scores(checkpoint, scorer, query, docs[:n_loop]), sync=sync
    )
    loop = loop_run.value
    loop_seconds = loop_run.seconds * len(docs) / n_loop
    ours = [s.value for s in cold_scores]
    delta_loop = max(abs(a - b) for a, b in zip(ours, loop, strict=False))

    pylate: dict[str, Any] | None = None
    if args.pylate_python:
        job = {
            "checkpoint": str(checkpoint),
            "device": str(device),
            "query": query,
            "documents": docs,
            "runs": 1,
            "warm_runs": 5,
            "threads": torch.get_num_threads(),
        }
        (root / "job.json").write_text(json.dumps(job))
        subprocess.run(
            [
                args.pylate_python,
                __file__,
                "--pylate-worker",
                str(root / "job.json"),
                str(root / "pylate.json"),
            ],
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )
        pylate = json.loads((root / "pylate.json").read_text())

    n = len(docs)
    loop_median = loop_seconds
    timings: list[tuple[str, list[float] | None, list[float]]] = [
        ("ours cold (empty cache)", cold_times, cold_times),
        ("ours warm (cached vectors)", warm_times, warm_times),
        ("loop: 1 document per forward", None, [loop_median]),
    ]
    if pylate is not None:
        timings.append(("pylate encode + rank.rerank", None, pylate["seconds"]))
        timings.append(("pylate rank.rerank, pre-encoded", None, pylate["warm_seconds"]))
    results: list[dict[str, Any]] = []
    for name, worst, times in timings:
        seconds = statistics.median(times)
        results.append(
            {
                "engine": name,
                "seconds": seconds,
                "worst_seconds": max(worst) if worst else None,
                "docs_per_s": n / seconds,
                "speedup_vs_loop": loop_median / seconds,
            }
        )
    print(f"# {datetime.date.today().isoformat()} · {machine(device)} · {platform.platform()}")
    print(f"# torch {torch.__version__}, dtype {scorer.dtype}, {args.shape}: {SHAPES[args.shape]}")
    print(
        f"# tokenizer: {'GTE-ModernColBERT-v1 (fixtures)' if fixtures else 'word tokenizer'}; "
        f"1 query ({scorer.encode_query(query).tokens} tokens) x {n} documents, "
        f"{min(tokens)}-{max(tokens)} tokens (mean {statistics.mean(tokens):.0f}), "
        f"{truncated} truncated; load average {os.getloadavg()[0]:.1f}"
    )
    if n_loop != n:
        print(f"# loop timed on {n_loop} documents and scaled to {n}")
    print(harness.format_table(results, TABLE, markdown=True))
    deltas = {"max_abs_delta_vs_loop": delta_loop}
    print(f"max |Δscore| ours vs loop: {delta_loop:.2e}")
    if pylate is not None:
        delta = max(abs(a - b) for a, b in zip(ours, pylate["exact"], strict=True))
        padded = max(abs(a - b) for a, b in zip(ours, pylate["rerank"], strict=True))
        print(f"max |Δscore| ours vs PyLate per-document MaxSim: {delta:.2e}")
        print(f"max |Δscore| ours vs PyLate rank.rerank (zero-padded, unmasked): {padded:.2e}")
        deltas |= {"max_abs_delta_vs_pylate": delta, "max_abs_delta_vs_pylate_rerank": padded}
    harness.write_json(args.json, "bench_colbert", results, args=args, extra=deltas)


if __name__ == "__main__":
    main()
