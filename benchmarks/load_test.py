"""Load test of the remote scorer: N concurrent callers against a local rerank server.

Not a unit test. Starts ``python -m rerank_plugins.testing.fake_server`` on loopback (a separate
process, so the client's CPU time is the client's alone) and runs, for a bounded time
each:

1. raw httpx: the same Cohere-shaped POST with a bare ``httpx.AsyncClient`` (the floor);
2. RemoteScorer, no failures: same load through ``ascore`` (or ``score`` from threads);
3. RemoteScorer while the server answers 10% of requests with 429 (``Retry-After: 0``)
   or 503: every returned score is checked against the server's deterministic function,
   and documents lost (no score, wrong score, or an error) are counted. Must be 0.

Reports calls/s, HTTP requests/s, p50/p99 latency and client CPU per call; the client
overhead is RemoteScorer minus raw httpx.

    python benchmarks/load_test.py --callers 16 --seconds 10 --docs 20

``--smoke``: 2 callers, 0.5 s per phase, 4 documents per call (checks the script runs).
The table and ``--json`` come from ``harness.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import harness
import httpx
from harness import Column

from rerank_plugins.errors import RerankError
from rerank_plugins.remote import RemoteScorer, RetryPolicy
from rerank_plugins.testing import WORDS
from rerank_plugins.testing.fake_server import fake_probability


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    calls: int = 0
    documents: int = 0
    lost: int = 0
    errors: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    requests: int = 0  # as counted by the server

    def row(self) -> dict[str, Any]:
        """The phase's figures (a table row and a JSON result)."""
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1e3 if lat else float("nan")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else float("nan")
        return {
            "phase": self.name,
            "calls_per_s": self.calls / self.wall,
            "requests_per_s": self.requests / self.wall,
            "p50_ms": p50,
            "p99_ms": p99,
            "client_cpu_us_per_call": self.cpu / max(1, self.calls) * 1e6,
            "documents": self.documents,
            "lost": self.lost,
            "errors": self.errors,
            "calls": self.calls,
            "wall_seconds": self.wall,
            "cpu_seconds": self.cpu,
        }


TABLE = [
    Column("phase", "phase", left=True, fmt=""),
    Column("calls_per_s", "calls/s", fmt=",.0f"),
    Column("requests_per_s", "HTTP req/s", fmt=",.0f"),
    Column("p50_ms", "p50 ms", fmt=".2f"),
    Column("p99_ms", "p99 ms", fmt=".2f"),
    Column("client_cpu_us_per_call", "client CPU µs/call", fmt=",.0f"),
    Column("documents", "documents", fmt=","),
    Column("lost", "lost", fmt="d"),
    Column("errors", "errors", fmt="d"),
]


class Server:
    """The fake rerank server in a child process, on a free loopback port."""

    def __init__(self, fail_rate: float, seed: int) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "rerank_plugins.testing.fake_server",
                "--host", "127.0.0.1", "--port", "0",
                "--fail-rate", str(fail_rate), "--seed", str(seed),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.url = line.removeprefix("listening on ")

    def stop(self) -> int:
        """Stop the server; return how many requests it served."""
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise RuntimeError("the fake server did not stop within 60 s of SIGTERM") from None
        served = out.strip().splitlines()[-1] if out.strip() else ""
        return int(served.split()[1]) if served.startswith("served ") else -1


def workload(docs: int, words: int, seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    return [(text(6), [text(rng.randint(1, words)) for _ in range(docs)]) for _ in range(64)]


async def run_async(
    phase: Phase,
    call: Callable[[str, list[str]], Awaitable[list[float]]],
    callers: int,
    seconds: float,
    work: list[tuple[str, list[str]]],
) -> None:
    deadline = time.perf_counter() + seconds

    async def caller(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            query, docs = work[i % len(work)]
            i += callers
            began = time.perf_counter()
            try:
                values = await call(query, docs)
            except RerankError:
                phase.errors += 1
                phase.lost += len(docs)
                continue
            phase.latencies.append(time.perf_counter() - began)
            phase.calls += 1
            phase.documents += len(docs)
            phase.lost += count_lost(query, docs, values)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    phase.wall, phase.cpu = time.perf_counter() - wall, time.process_time() - cpu


def run_threads(
    phase: Phase,
    call: Callable[[str, list[str]], list[float]],
    callers: int,
    seconds: float,
    work: list[tuple[str, list[str]]],
) -> None:
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def caller(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            query, docs = work[i % len(work)]
            i += callers
            began = time.perf_counter()
            try:
                values = call(query, docs)
            except RerankError:
                with lock:
                    phase.errors += 1
                    phase.lost += len(docs)
                continue
            elapsed = time.perf_counter() - began
            lost = count_lost(query, docs, values)
            with lock:
                phase.latencies.append(elapsed)
                phase.calls += 1
                phase.documents += len(docs)
                phase.lost += lost

    cpu, wall = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.wall, phase.cpu = time.perf_counter() - wall, time.process_time() - cpu


def count_lost(query: str, docs: list[str], values: list[float]) -> int:
    """Documents without their own, correct score."""
    if len(values) != len(docs):
        return len(docs)
    return sum(v != fake_probability(query, d) for v, d in zip(values, docs, strict=True))


def scorer_for(url: str, callers: int, *, fast_retries: bool) -> RemoteScorer:
    # The server's Retry-After is 0; a short backoff keeps 503 retries cheap in a test
    # that lasts seconds (production keeps the 0.5 s default).
    retry = RetryPolicy(max_retries=10, backoff=0.01, max_backoff=0.2) if fast_retries else None
    return RemoteScorer(url, dialect="cohere", max_concurrency=callers, retry=retry)


async def async_phases(args: argparse.Namespace, work: list[tuple[str, list[str]]]) -> list[Phase]:
    phases = []
    server = Server(0.0, args.seed)
    try:
        raw = Phase("raw httpx.AsyncClient (floor)")
        limits = httpx.Limits(max_connections=args.callers, max_keepalive_connections=args.callers)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def post(query: str, docs: list[str]) -> list[float]:
                response = await client.post(
                    f"{server.url}/rerank", json={"query": query, "documents": docs}
                )
                response.raise_for_status()
                results = response.json()["results"]
                values = [0.0] * len(docs)
                for r in results:
                    values[r["index"]] = r["relevance_score"]
                return values

            await run_async(raw, post, args.callers, args.seconds, work)
        before = server.stop()
        raw.requests = before
        phases.append(raw)
    finally:
        if server.process.poll() is None:
            server.process.kill()

    server = Server(0.0, args.seed)
    try:
        ours = Phase("RemoteScorer.ascore")
        scorer = scorer_for(server.url, args.callers, fast_retries=False)

        async def ascore(query: str, docs: list[str]) -> list[float]:
            return [s.value for s in await scorer.ascore(query, docs)]

        await run_async(ours, ascore, args.callers, args.seconds, work)
        await scorer.aclose()
        ours.requests = server.stop()
        phases.append(ours)
    finally:
        if server.process.poll() is None:
            server.process.kill()

    server = Server(args.fail_rate, args.seed)
    try:
        faulty = Phase(f"RemoteScorer.ascore, {args.fail_rate:.0%} 429/503")
        scorer = scorer_for(server.url, args.callers, fast_retries=True)

        async def ascore_faulty(query: str, docs: list[str]) -> list[float]:
            return [s.value for s in await scorer.ascore(query, docs)]

        await run_async(faulty, ascore_faulty, args.callers, args.seconds, work)
        await scorer.aclose()
        faulty.requests = server.stop()
        phases.append(faulty)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    return phases


def sync_phases(args: argparse.Namespace, work: list[tuple[str, list[str]]]) -> list[Phase]:
    phases = []
    for fail_rate, name in (
        (0.0, "RemoteScorer.score, threads"),
        (args.fail_rate, f"RemoteScorer.score, threads, {args.fail_rate:.0%} 429/503"),
    ):
        server = Server(fail_rate, args.seed)
        try:
            phase = Phase(name)
            scorer = scorer_for(server.url, args.callers, fast_retries=fail_rate > 0)

            def score(query: str, docs: list[str], scorer: RemoteScorer = scorer) -> list[float]:
                return [s.value for s in scorer.score(query, docs)]

            run_threads(phase, score, args.callers, args.seconds, work)
            scorer.close()
            phase.requests = server.stop()
            phases.append(phase)
        finally:
            if server.process.poll() is None:
                server.process.kill()
    return phases


def in_process_overhead(docs: int, calls: int = 2000) -> tuple[float, float]:
    """CPU µs per call of raw httpx and of RemoteScorer.ascore against one canned answer
    through ``httpx.MockTransport``: the client's own cost, without server or network.
    Best of three rounds of :func:`harness.round_robin` on the CPU clock."""
    documents = [f"w{i} w{i + 1}" for i in range(docs)]
    payload = json.dumps(
        {"results": [{"index": i, "relevance_score": 0.5} for i in range(docs)]}
    ).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=payload, headers={"content-type": "application/json"})

    transport = httpx.MockTransport(handler)
    client = httpx.AsyncClient(transport=transport)
    scorer = RemoteScorer(
        "http://127.0.0.1:1/v1", async_client=httpx.AsyncClient(transport=transport)
    )

    async def raw() -> None:
        response = await client.post(
            "http://127.0.0.1:1/v1/rerank", json={"query": "w1", "documents": documents}
        )
        response.raise_for_status()
        values = [0.0] * docs
        for r in response.json()["results"]:
            values[r["index"]] = r["relevance_score"]

    async def ours() -> None:
        await scorer.ascore("w1", documents)

    async def many(fn: Callable[[], Awaitable[None]]) -> None:
        for _ in range(calls):
            await fn()

    loop = asyncio.new_event_loop()
    try:
        best = harness.round_robin(
            {
                "raw": lambda: loop.run_until_complete(many(raw)),
                "ours": lambda: loop.run_until_complete(many(ours)),
            },
            3,
            clock="cpu",
            catch=(),
        )
        loop.run_until_complete(client.aclose())
    finally:
        loop.close()
    return best["raw"].cpu_seconds / calls * 1e6, best["ours"].cpu_seconds / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (bounded)")
    parser.add_argument("--docs", type=int, default=20, help="documents per call")
    parser.add_argument("--words", type=int, default=60, help="max words per document")
    parser.add_argument("--fail-rate", type=float, default=0.10)
    parser.add_argument("--mode", choices=["async", "sync", "both"], default="both")
    harness.add_common_args(parser, repeats=None, threads=False)
    args = parser.parse_args()
    if args.smoke:
        args.callers, args.seconds, args.docs, args.words = 2, 0.5, 4, 20
    if not 0 < args.seconds <= 120:
        parser.error("--seconds must be in (0, 120]")
    work = workload(args.docs, args.words, args.seed)
    phases: list[Phase] = []
    if args.mode in ("async", "both"):
        phases += asyncio.run(async_phases(args, work))
    if args.mode in ("sync", "both"):
        phases += sync_phases(args, work)
    print(
        f"{args.callers} callers x {args.seconds:g} s per phase, {args.docs} documents per "
        f"call (1-{args.words} words), fake server in a child process on loopback; "
        f"python {platform.python_version()}, httpx {httpx.__version__}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end"
    )
    results = [phase.row() for phase in phases]
    print(harness.format_table(results, TABLE, markdown=True))
    extra: dict[str, float] = {}
    by_name = {p.name: p for p in phases}
    raw, ours = by_name.get("raw httpx.AsyncClient (floor)"), by_name.get("RemoteScorer.ascore")
    if raw and ours and raw.calls and ours.calls:
        overhead_cpu = (ours.cpu / ours.calls - raw.cpu / raw.calls) * 1e6
        overhead_p50 = (statistics.median(ours.latencies) - statistics.median(raw.latencies)) * 1e3
        print(
            f"\nclient overhead vs raw httpx: {overhead_cpu:+,.0f} µs CPU per call, "
            f"{overhead_p50:+.2f} ms p50 latency"
        )
        extra |= {"overhead_cpu_us_per_call": overhead_cpu, "overhead_p50_ms": overhead_p50}
    raw_cpu, ours_cpu = in_process_overhead(args.docs, 50 if args.smoke else 2000)
    print(
        f"in-process (MockTransport, no network): raw httpx {raw_cpu:,.0f} µs CPU per call, "
        f"RemoteScorer.ascore {ours_cpu:,.0f} µs: overhead {ours_cpu - raw_cpu:+,.0f} µs "
        f"({ours_cpu / raw_cpu - 1:+.0%})"
    )
    lost = sum(p.lost for p in phases)
    print(f"documents lost across all phases: {lost}")
    extra |= {"in_process_raw_cpu_us": raw_cpu, "in_process_ours_cpu_us": ours_cpu}
    harness.write_json(args.json, "load_test", results, args=args, extra={**extra, "lost": lost})
    if lost:
        sys.exit(1)


if __name__ == "__main__":
    main()
