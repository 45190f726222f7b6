"""Fault figures for RESULTS.md: what each hostile server costs the remote client.

Not a unit test (the outcomes are asserted in tests/remote/test_hostile_servers.py). The
hostile server (:mod:`rerank_plugins.testing.hostile_server`) runs in this process; every
measured call runs in a fresh child process, so its peak-RSS growth (``ru_maxrss`` after
the call minus before it, after a warm-up call) is the client's alone. For the oversized
bodies the same child also measures the unbounded read the client did before (a plain
``httpx`` POST reading ``.content``), as the baseline.

Then a mixed-fault load run: threads calling ``RemoteScorer.score`` against a server that
drips (10%), sends 300 MB (5%) or answers 503 (5%): every document must come back with its
own correct score or inside a typed error's ``indices`` (0 silently lost).

And the pair-truncation fix: encoding N over-window documents, the old list-membership
loop vs the current one, best of 3, interleaved.

    python benchmarks/faults.py [--deadline 2] [--load-seconds 10] [--truncate-docs 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from rerank_plugins.errors import RerankError
from rerank_plugins.remote import RemoteScorer, RetryPolicy
from rerank_plugins.testing.fake_server import fake_probability
from rerank_plugins.testing.hostile_server import HostileServer

REMOTE_CASES = [
    "large-declared",
    "large-chunked",
    "endless",
    "gzip-bomb",
    "drip",
    "stall",
    "gzip-lie",
    "unknown-encoding",
    "malformed-json",
    "deep-nesting",
    "huge-number",
    "nan-score",
    "latin1-body",
    "bogus-charset-error",
    "utf16-body",
    "close-early",
]
BASELINE_CASES = {"large-declared", "large-chunked", "gzip-bomb"}
DOCS = ["w1 w2", "w3"]


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    """One measured call; prints a JSON line."""
    base = args.child_url
    if args.child_mode == "baseline":
        with httpx.Client(timeout=60) as client:
            client.post(base.replace(args.child_fault, "ok") + "/v1/rerank", json={"query": "q"})
            before, began = peak_rss(), time.perf_counter()
            try:
                body = client.post(
                    f"{base}/v1/rerank", json={"query": "q", "documents": DOCS}
                ).content
                outcome = f"read {len(body) / 2**20:,.0f} MiB"
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
    else:
        scorer = RemoteScorer(
            base,
            api_key_env=None,
            deadline=args.deadline,
            retry=RetryPolicy(max_retries=4, backoff=0.05),
        )
        warm = RemoteScorer(base.replace(args.child_fault, "ok"), api_key_env=None)
        warm.score("q", DOCS)
        before, began = peak_rss(), time.perf_counter()
        try:
            if args.child_mode == "async":
                import asyncio

                asyncio.run(scorer.ascore("q", DOCS))
            else:
                scorer.score("q", DOCS)
            outcome = "scores"
        except RerankError as exc:
            outcome = f"{type(exc).__name__} indices={list(exc.indices)}"
    wall = time.perf_counter() - began
    growth = (peak_rss() - before) / 2**20
    print(json.dumps({"outcome": outcome, "wall": wall, "rss_mib": growth}))


def measure(server: HostileServer, fault: str, mode: str, deadline: float) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable, __file__, "--child-url", server.url(fault), "--child-fault", fault,
            "--child-mode", mode, "--deadline", str(deadline),
        ],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    if out.returncode != 0:
        return {"outcome": f"child failed: {out.stderr.strip().splitlines()[-1:]}", "wall": 0.0,
                "rss_mib": 0.0}  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def remote_table(server: HostileServer, deadline: float) -> None:
    print(f"\n### Hostile servers (deadline={deadline:g} s, 4 retries allowed)\n")
    print("| fault | path | outcome | wall s | peak RSS growth MiB | unbounded read before |")
    print("|---|---|---|---:|---:|---|")
    for fault in REMOTE_CASES:
        baseline = "—"
        if fault in BASELINE_CASES:
            b = measure(server, fault, "baseline", deadline)
            baseline = f"{b['outcome']}, {b['rss_mib']:,.0f} MiB, {b['wall']:.1f} s"
        for mode in ("sync", "async"):
            r = measure(server, fault, mode, deadline)
            print(
                f"| {fault} | {mode} | {r['outcome']} | {r['wall']:.2f} | {r['rss_mib']:.1f} "
                f"| {baseline if mode == 'sync' else ''} |"
            )


def mixed_load(server: HostileServer, seconds: float, callers: int, deadline: float) -> int:
    """Threads calling score() against the mixed-fault server; returns documents lost."""
    scorer = RemoteScorer(
        server.url("mixed"),
        api_key_env=None,
        timeout=httpx.Timeout(5.0, read=0.5),  # a dripping body counts as a timed-out attempt
        deadline=deadline,
        max_batch_size=5,
        max_concurrency=callers,
        retry=RetryPolicy(max_retries=6, backoff=0.01, max_backoff=0.1),
    )
    counts = {"calls": 0, "documents": 0, "scored": 0, "in_errors": 0, "named": 0, "lost": 0}
    errors: dict[str, int] = {}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def caller(k: int) -> None:
        i = 0
        while time.monotonic() < end:
            query = f"w{k} w{i % 7}"
            documents = [f"w{(k + i + j) % 50} w{j}" for j in range(12)]
            i += 1
            try:
                values = [s.value for s in scorer.score(query, documents)]
            except RerankError as exc:
                # The call failed loudly: its documents are not lost silently, the caller
                # knows; the error names the documents of the failed request(s).
                with lock:
                    counts["calls"] += 1
                    counts["documents"] += len(documents)
                    counts["in_errors"] += len(documents)
                    counts["named"] += len(set(exc.indices)) if hasattr(exc, "indices") else 0
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            wrong = sum(
                v != fake_probability(query, d) for v, d in zip(values, documents, strict=False)
            )
            with lock:
                counts["calls"] += 1
                counts["documents"] += len(documents)
                counts["scored"] += len(documents) - wrong
                counts["lost"] += wrong + abs(len(values) - len(documents))

    began = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    scorer.close()
    faults = {f: server.seen.count(f) for f in ("mixed:drip", "mixed:large-chunked", "mixed:503")}
    print(
        f"\n### Mixed faults under load ({callers} threads, {seconds:g} s, "
        f"deadline={deadline:g} s)\n"
    )
    print("| calls | documents | scored correctly | in failed calls (named by the error) "
          "| silently lost | requests | faults injected | errors | wall s |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---|---|---:|")
    requests = server.seen.count("mixed")
    print(
        f"| {counts['calls']:,} | {counts['documents']:,} | {counts['scored']:,} "
        f"| {counts['in_errors']:,} ({counts['named']:,}) | {counts['lost']} | {requests:,} "
        f"| {faults} | {errors} | {wall:.1f} |"
    )
    return counts["lost"]


def truncation(n_docs: int) -> None:
    from rerank_plugins.local.checkpoint import load_tokenizer
    from rerank_plugins.local.tokenization import EncodedPair, PairEncoder
    from rerank_plugins.testing import save_word_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        save_word_tokenizer(Path(tmp), model_max_length=8192)
        tokenizer = load_tokenizer(Path(tmp))
    encoder = PairEncoder(tokenizer, max_length=16)
    documents = [" ".join(f"w{(i + j) % 50}" for j in range(30)) for i in range(n_docs)]

    def old(query: str, docs: list[str]) -> list[EncodedPair]:
        # The loop as it was: `i in over` scans a list for every document.
        q = encoder.encode_query(query)
        enc = tokenizer.encode_batch(docs, add_special_tokens=False)
        room = encoder.max_length - tokenizer.num_special_tokens_to_add(is_pair=True) - len(q)
        over = [i for i, d in enumerate(enc) if len(d) > room]
        out = []
        for i, d in enumerate(enc):
            cut = i in over
            if cut:
                d.truncate(room)
            pair = tokenizer.post_process(q, d, add_special_tokens=True)
            out.append(EncodedPair(pair.ids, pair.type_ids, cut))
        return out

    best = {"old (list)": (float("inf"), 0.0), "new (set)": (float("inf"), 0.0)}
    for _ in range(3):
        for name, fn in (("old (list)", old), ("new (set)", encoder.encode)):
            wall, cpu = time.perf_counter(), time.process_time()
            pairs = fn("w1", documents)
            took = (time.perf_counter() - wall, time.process_time() - cpu)
            assert len(pairs) == n_docs and all(p.truncated for p in pairs)
            best[name] = min(best[name], took)
    print(f"\n### Truncating {n_docs:,} over-window documents (best of 3, interleaved)\n")
    print("| loop | wall s | CPU s |\n|---|---:|---:|")
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    ratio = best["old (list)"][0] / best["new (set)"][0]
    print(f"\nold / new wall: {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=2.0)
    parser.add_argument("--load-seconds", type=float, default=10.0)
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--truncate-docs", type=int, default=20000)
    parser.add_argument("--child-url", help=argparse.SUPPRESS)
    parser.add_argument("--child-fault", help=argparse.SUPPRESS)
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_url:
        child(args)
        return
    print(
        f"python {platform.python_version()}, httpx {httpx.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    with HostileServer() as server:
        remote_table(server, args.deadline)
        lost = mixed_load(server, args.load_seconds, args.callers, deadline=10.0)
    truncation(args.truncate_docs)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; documents silently lost: {lost}")
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
