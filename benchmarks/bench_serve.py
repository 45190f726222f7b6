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
``--requests-ii`` requests. Printed per server: requests/s, documents/s, p50/p99 latency,
server CPU-seconds (from /proc) and documents per server-CPU-second, documents lost
(non-200 answers or missing results; must be 0), and max |Δscore| against ours on the
same documents. Servers are timed round-robin for ``--rounds`` rounds; the best round
(documents/s) is kept.

    python benchmarks/bench_serve.py                 # both workloads, ~10 minutes here
    python benchmarks/bench_serve.py --workloads i   # only (i)
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from bench_cross_encoder import QUERY_WORDS, SPECIALS, Shape, long_tailed_lengths

from rerank_plugins.testing import make_modernbert_checkpoint, random_text

ROOT = Path(__file__).resolve().parents[1]
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_ours(directory: Path, name: str, extra: list[str], logs: Path) -> Server:
    port = free_port()
    log = logs / f"{name.replace(' ', '_').replace(',', '')}.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "rerank_plugins", "serve", "--model", str(directory),
        "--device", "cpu", "--port", str(port), "--max-queued-tokens", "100000000",
        "--log-level", "warning", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(name, f"http://127.0.0.1:{port}/v1/rerank", process, log)
    wait_ready(server, f"http://127.0.0.1:{port}/health")
    return server


def start_infinity(directory: Path, logs: Path, batch_size: int) -> Server:
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
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{server.name} not ready after {seconds:.0f}s")


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
    p.add_argument("--workloads", default="i,ii")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (i)")
    p.add_argument("--rounds-ii", type=int, default=1, help="rounds of (ii) (minutes each)")
    p.add_argument("--seconds-i", type=float, default=12.0)
    p.add_argument("--requests-ii", type=int, default=1, help="requests per client in (ii)")
    p.add_argument("--infinity-batch-size", type=int, default=8)
    p.add_argument("--no-infinity", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    workloads = set(args.workloads.split(","))

    shape = Shape(layers=6, hidden=384, heads=6, intermediate=576, vocab=50368)
    print(f"# bench_serve  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {platform.node()} {platform.machine()} cpus={os.cpu_count()}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"# model: ModernBERT random weights, {shape.layers} layers, hidden {shape.hidden}, "
        f"window {WINDOW}, fp32 CPU; Infinity batch size {args.infinity_batch_size}"
    )
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config=shape.config(WINDOW), seed=args.seed
        )
        try:
            ours = start_ours(directory, "ours", [], Path(tmp))
            servers = [ours]
            off = None
            if "i" in workloads:  # (ii) does not compare batching on and off
                off = start_ours(
                    directory, "ours, no merging", ["--max-batch-requests", "1"], Path(tmp)
                )
                servers.append(off)
            if not args.no_infinity:
                servers.append(start_infinity(directory, Path(tmp), args.infinity_batch_size))
            warm = pool_i(args.seed + 99, 8)
            for server in servers:
                asyncio.run(drive(server, warm, clients=4, seconds=None, per_client=2))
            if "i" in workloads:
                print("# (i) 32 clients x 1-5 short documents", flush=True)
                runs = best_of(
                    servers,
                    args.rounds,
                    pool_i(args.seed),
                    clients=32,
                    seconds=args.seconds_i,
                    per_client=None,
                )
                table(
                    f"(i) 32 clients x 1-5 short docs, {args.seconds_i:.0f} s per run", runs, "ours"
                )
            if "ii" in workloads:
                print("# (ii) 8 clients x 20 long-tailed documents", flush=True)
                pool = pool_ii(args.seed + 1, 8, args.requests_ii)
                tokens = sum(len(d.split()) + QUERY_WORDS + SPECIALS for r in pool for d in r.docs)
                longest = max(len(d.split()) for r in pool for d in r.docs)
                contenders = [s for s in servers if s is not off]
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
        finally:
            for server in servers:
                stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
