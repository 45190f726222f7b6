"""Serving throughput: ``rerank-plugins serve`` against Infinity, and batching on vs off.

One process drives every server over loopback with a fixed closed-loop client population
(asyncio + httpx; each client sends its next request when the previous one is answered).
Servers run as child processes on 127.0.0.1, all on the same random-weight ModernBERT
checkpoint (the cross-encoder benchmark's small CPU shape: 6 layers, hidden 384, window
8,192), fp32 on the CPU:

- ``ours``: ``rerank-plugins serve`` (cross-request dynamic batching, packed engine);
- ``ours, no merging``: the same with ``--max-batch-requests 1`` (a forward never holds
  two requests' documents);
- ``infinity``: the Infinity server (``infinity_emb v2``, torch engine, sentence-
  transformers CrossEncoder underneath, its own dynamic batching), from the virtualenv of
  ``integration_tests/setup_infinity.sh``.

Workloads: (i) 32 clients x 1-5 short documents (8-60 words) per request, for
``--seconds-i`` per server and round; (ii) 8 clients x 20 long-tailed documents each
(log-normal lengths, median ~300 tokens, one at 8,192), every client sending
``--requests-ii`` requests; (iii) both populations at once (the 32 short clients for
``--seconds-i`` while the 8 long-tailed ones run), reporting the short requests' latency
beside their latency alone in (i).

Every server runs ``--threads`` intra-op threads (ours ``--threads N``, Infinity
``OMP_NUM_THREADS=N``); ``--default-threads`` adds a row "ours, default threads" (our
automatic choice: affinity, cgroup quota, busy cores). ``--background-load N`` starts N
busy-loop processes (one pure-Python ``while True`` each, like one other CPU-bound tenant
per core) for the whole run and stops them at the end. ``--tiny`` uses the issue's tiny
22-layer shape (hidden 64), where the serving path rather than the forward dominates.

Printed per server: requests/s, documents/s, p50/p99 latency,
server CPU-seconds (from /proc) and documents per server-CPU-second, documents lost
(non-200 answers or missing results; must be 0), and max |Δscore| against ours on the
same documents. Servers are timed round-robin for ``--rounds`` rounds; the best round
(documents/s) is kept.

    python benchmarks/bench_serve.py                 # (i) and (ii), ~10 minutes here
    python benchmarks/bench_serve.py --workloads i   # only (i)
    python benchmarks/bench_serve.py --tiny --workloads i,ii,iii --default-threads \
        --background-load 2                          # the contention run
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_cross_encoder import QUERY_WORDS, SPECIALS, Shape
from harness import long_tailed_lengths

from rerank_plugins.testing import (
    free_port,
    make_modernbert_checkpoint,
    random_text,
    wait_until_healthy,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL_SHAPE = Shape(layers=6, hidden=384, heads=6, intermediate=576, vocab=50368)
TINY_SHAPE = Shape(layers=22, hidden=64, heads=4, intermediate=96, vocab=50368)
"""The issue's tiny 22-layer shape: the forward is cheap, the serving path shows."""
WINDOW = 8192
INFINITY_VENV = Path(os.environ.get("RERANK_INFINITY_VENV") or ROOT / "integration_tests" / ".venv")


@dataclass
class Request:
    query: str
    docs: list[str]


@dataclass
class Server:
    name: str
    url: str  # POST target
    process: subprocess.Popen[bytes]
    log: Path
    model: str | None = None

    def cpu_seconds(self) -> float:
        """utime + stime of the server process (and its reaped children)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    server: str
    wall: float
    cpu: float
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    documents: int = 0
    lost: int = 0
    scores: dict[tuple[int, int], float] = field(default_factory=dict)  # (request, doc)

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.wall if self.wall else math.nan


def start_ours(
    directory: Path,
    name: str,
    extra: list[str],
    logs: Path,
    threads: int | None = 1,
    env_extra: dict[str, str] | None = None,
) -> Server:
    port = free_port()
    log = logs / f"{name.replace(' ', '_').replace(',', '')}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    command = [
        sys.executable, "-m", "rerank_plugins", "serve", "--model", str(directory),
        "--device", "cpu", "--port", str(port), "--max-queued-tokens", "100000000",
        "--log-level", "warning", *extra,
    ]  # fmt: skip
    if threads is not None:
        command += ["--threads", str(threads)]
    else:  # the automatic choice: no inherited override either
        env.pop("RERANK_THREADS", None)
        env.pop("OMP_NUM_THREADS", None)
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(name, f"http://127.0.0.1:{port}/v1/rerank", process, log)
    wait_ready(server, f"http://127.0.0.1:{port}/health")
    return server


def start_infinity(directory: Path, logs: Path, batch_size: int, threads: int = 1) -> Server:
    executable = INFINITY_VENV / "bin" / "infinity_emb"
    if not executable.exists():
        raise SystemExit(
            f"no Infinity at {executable}: run bash integration_tests/setup_infinity.sh"
        )
    port = free_port()
    log = logs / "infinity.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    command = [
        str(executable), "v2", "--model-id", str(directory), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1",
        "--engine", "torch", "--device", "cpu", "--dtype", "float32",
        "--batch-size", str(batch_size), "--no-trust-remote-code", "--no-bettertransformer",
        "--no-compile", "--no-model-warmup", "--no-vector-disk-cache", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server("infinity", f"http://127.0.0.1:{port}/v1/rerank", process, log, "tiny")
    wait_ready(server, f"http://127.0.0.1:{port}/health")
    return server


def wait_ready(server: Server, health: str, seconds: float = 300) -> None:
    wait_until_healthy(health, server.process, log=server.log, seconds=seconds, name=server.name)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


async def drive(
    server: Server,
    pool: Sequence[Request],
    *,
    clients: int,
    seconds: float | None,
    per_client: int | None,
    read_timeout: float = 3600.0,
) -> Run:
    """Closed loop: ``clients`` tasks, each sending the pool's requests in its own order,
    for ``seconds`` or ``per_client`` requests each."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(read_timeout)
    run = Run(server.name, 0.0, 0.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        stop_at = None if seconds is None else time.perf_counter() + seconds

        async def one_client(c: int) -> None:
            k = 0
            while True:
                if per_client is not None and k >= per_client:
                    return
                if stop_at is not None and time.perf_counter() >= stop_at:
                    return
                r = (c * 7919 + k) % len(pool)  # the same sequence for every server
                k += 1
                req = pool[r]
                body: dict[str, object] = {"query": req.query, "documents": req.docs}
                if server.model:
                    body["model"] = server.model
                start = time.perf_counter()
                try:
                    answer = await client.post(server.url, json=body)
                    results = answer.json()["results"] if answer.status_code == 200 else []
                except (httpx.HTTPError, ValueError, KeyError):
                    results = []
                run.latencies.append(time.perf_counter() - start)
                run.requests += 1
                seen = {int(x["index"]): float(x["relevance_score"]) for x in results}
                run.documents += len(seen)
                run.lost += len(req.docs) - len(seen)
                for i, value in seen.items():
                    run.scores[(r, i)] = value

        cpu = server.cpu_seconds()
        begin = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        run.wall = time.perf_counter() - begin
        run.cpu = server.cpu_seconds() - cpu
    return run


def pool_i(seed: int, n: int = 256) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        query = random_text(rng, QUERY_WORDS)
        docs = [random_text(rng, rng.randint(8, 60)) for _ in range(rng.randint(1, 5))]
        out.append(Request(query, docs))
    return out


def pool_ii(seed: int, clients: int, per_client: int) -> list[Request]:
    rng = random.Random(seed)
    n = clients * per_client
    room = WINDOW - QUERY_WORDS - SPECIALS
    lengths = long_tailed_lengths(rng, n * 20, median=300, longest=room)
    query = random_text(rng, QUERY_WORDS)
    return [
        Request(query, [random_text(rng, m) for m in lengths[k * 20 : (k + 1) * 20]])
        for k in range(n)
    ]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else math.nan


def table(title: str, runs: list[Run], reference: str) -> None:
    ref = next(r for r in runs if r.server == reference)
    print(f"\n## {title}")
    print(
        "| server | requests/s | docs/s | p50 ms | p99 ms | server CPU s | docs/CPU-s "
        f"| docs lost | max abs Δscore vs {reference} | {reference} ÷ it (docs/s) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        shared = [k for k in r.scores if k in ref.scores]
        delta = max((abs(r.scores[k] - ref.scores[k]) for k in shared), default=math.nan)
        ratio = ref.docs_per_s / r.docs_per_s if r.docs_per_s else math.nan
        print(
            f"| {r.server} | {r.requests / r.wall:.1f} | {r.docs_per_s:.1f} "
            f"| {statistics.median(r.latencies) * 1e3:.0f} | {pct(r.latencies, 0.99) * 1e3:.0f} "
            f"| {r.cpu:.1f} | {r.documents / r.cpu if r.cpu else math.nan:.1f} | {r.lost} "
            f"| {delta:.1e} ({len(shared)} docs) | {ratio:.2f} |"
        )


def best_of(
    servers: list[Server], rounds: int, pool: list[Request], **how: int | float | None
) -> list[Run]:
    best: dict[str, Run] = {}
    for _ in range(rounds):
        for server in servers:
            run = asyncio.run(drive(server, pool, **how))  # type: ignore[arg-type]
            print(
                f"#   {server.name}: {run.documents / run.wall:.1f} docs/s, "
                f"{run.requests} requests, {run.lost} lost",
                flush=True,
            )
            previous = best.get(server.name)
            if previous is None or run.docs_per_s > previous.docs_per_s:
                if previous is not None:
                    run.scores.update(previous.scores)
                best[server.name] = run
    return [best[s.name] for s in servers]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default="i,ii", help="any of i, ii, iii (mixed)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (i)")
    p.add_argument("--rounds-ii", type=int, default=1, help="rounds of (ii) (minutes each)")
    p.add_argument("--seconds-i", type=float, default=12.0)
    p.add_argument("--requests-ii", type=int, default=1, help="requests per client in (ii)")
    p.add_argument("--infinity-batch-size", type=int, default=8)
    p.add_argument("--no-infinity", action="store_true")
    p.add_argument("--no-unmerged", action="store_true", help="leave out 'ours, no merging'")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every server")
    p.add_argument(
        "--default-threads", action="store_true", help="add 'ours, default threads' (automatic)"
    )
    p.add_argument(
        "--compare-threads",
        type=int,
        help="add 'ours, N threads' and the same with OMP_WAIT_POLICY=PASSIVE (forced N)",
    )
    p.add_argument(
        "--background-load", type=int, default=0, help="busy-loop processes run meanwhile"
    )
    p.add_argument("--tiny", action="store_true", help="the tiny 22-layer shape (hidden 64)")
    p.add_argument(
        "--compare-preempt",
        action="store_true",
        help="add 'ours, no preemption' (--preempt-after-ms off: short requests wait for "
        "a long batch's whole forward)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    workloads = set(args.workloads.split(","))

    shape = TINY_SHAPE if args.tiny else SMALL_SHAPE
    print(f"# bench_serve  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.node()} {platform.machine()} cpus={os.cpu_count()}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"# model: ModernBERT random weights, {shape.layers} layers, hidden {shape.hidden}, "
        f"window {WINDOW}, fp32 CPU; {args.threads} intra-op thread(s) per server; "
        f"Infinity batch size {args.infinity_batch_size}; background load: "
        f"{args.background_load} busy-loop process(es)"
    )
    servers: list[Server] = []
    load = start_background_load(args.background_load)
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config=shape.config(WINDOW), seed=args.seed
        )
        try:
            servers = start_servers(directory, Path(tmp), args, workloads)
            warm = pool_i(args.seed + 99, 8)
            for server in servers:
                asyncio.run(drive(server, warm, clients=4, seconds=None, per_client=2))
            alone: list[Run] = []
            if "i" in workloads or "iii" in workloads:
                print("# (i) 32 clients x 1-5 short documents", flush=True)
                alone = best_of(
                    servers,
                    args.rounds,
                    pool_i(args.seed),
                    clients=32,
                    seconds=args.seconds_i,
                    per_client=None,
                )
                table(
                    f"(i) 32 clients x 1-5 short docs, {args.seconds_i:.0f} s per run",
                    alone,
                    "ours",
                )
            contenders = [s for s in servers if s.name != "ours, no merging"]
            if "ii" in workloads:
                print("# (ii) 8 clients x 20 long-tailed documents", flush=True)
                pool = pool_ii(args.seed + 1, 8, args.requests_ii)
                tokens = sum(len(d.split()) + QUERY_WORDS + SPECIALS for r in pool for d in r.docs)
                longest = max(len(d.split()) for r in pool for d in r.docs)
                runs = best_of(
                    contenders,
                    args.rounds_ii,
                    pool,
                    clients=8,
                    seconds=None,
                    per_client=args.requests_ii,
                )
                table(
                    f"(ii) 8 clients x {args.requests_ii} request(s) x 20 long-tailed docs "
                    f"({tokens:,} pair tokens, longest document {longest} words)",
                    runs,
                    "ours",
                )
            if "iii" in workloads:
                print("# (iii) (i) and (ii) at once", flush=True)
                mixed(contenders, alone, args)
        finally:
            for server in servers:
                stop(server)
            for process in load:
                process.kill()
                process.wait(timeout=10)
    return 0


def start_servers(
    directory: Path, logs: Path, args: argparse.Namespace, workloads: set[str]
) -> list[Server]:
    servers = [start_ours(directory, "ours", [], logs, args.threads)]
    if args.default_threads:
        servers.append(start_ours(directory, "ours, default threads", [], logs, None))
    if args.compare_threads:
        n = args.compare_threads
        servers.append(start_ours(directory, f"ours, {n} threads", [], logs, n))
        servers.append(
            start_ours(
                directory,
                f"ours, {n} threads, passive wait",
                [],
                logs,
                n,
                {"OMP_WAIT_POLICY": "PASSIVE"},
            )
        )
    if args.compare_preempt:
        servers.append(
            start_ours(
                directory, "ours, no preemption", ["--preempt-after-ms", "off"], logs, args.threads
            )
        )
    if "i" in workloads and not args.no_unmerged:  # (ii) does not compare batching on and off
        servers.append(
            start_ours(
                directory, "ours, no merging", ["--max-batch-requests", "1"], logs, args.threads
            )
        )
    if not args.no_infinity:
        servers.append(start_infinity(directory, logs, args.infinity_batch_size, args.threads))
    return servers


def start_background_load(n: int) -> list[subprocess.Popen[bytes]]:
    """``n`` busy-loop processes: the documented background load."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def mixed(servers: list[Server], alone: list[Run], args: argparse.Namespace) -> None:
    """(iii): 32 short clients and 8 long-tailed clients at once on each server."""
    short_pool = pool_i(args.seed)
    long_pool = pool_ii(args.seed + 1, 8, 4)
    by_name = {r.server: r for r in alone}
    print("\n## (iii) mixed: 32 short clients + 8 long-tailed clients at once")
    print(
        "| server | short docs/s | short p50 ms | short p99 ms | short p99 alone (i) ms "
        "| p99 mixed ÷ alone | long docs/s | long p99 ms | server CPU s | docs lost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for server in servers:

        async def both(server: Server = server) -> tuple[Run, Run]:
            return await asyncio.gather(
                drive(server, short_pool, clients=32, seconds=args.seconds_i, per_client=None),
                drive(server, long_pool, clients=8, seconds=args.seconds_i, per_client=None),
            )

        short, long = asyncio.run(both())
        ref = by_name.get(server.name)
        p99_alone = pct(ref.latencies, 0.99) if ref else math.nan
        p99 = pct(short.latencies, 0.99)
        print(
            f"| {server.name} | {short.docs_per_s:.1f} "
            f"| {statistics.median(short.latencies) * 1e3:.0f} | {p99 * 1e3:.0f} "
            f"| {p99_alone * 1e3:.0f} | {p99 / p99_alone:.2f} | {long.docs_per_s:.1f} "
            f"| {pct(long.latencies, 0.99) * 1e3:.0f} | {short.cpu:.1f} "
            f"| {short.lost + long.lost} |",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
