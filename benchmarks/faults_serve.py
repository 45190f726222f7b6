"""Fault figures for RESULTS.md: what one hostile request costs ``rerank-plugins serve``.

Not a unit test (the outcomes are asserted in tests/serve/test_faults.py and
tests/serve/test_slow_clients.py). Each probe starts a fresh server process (a tiny
random-weight ModernBERT with an 8,192-token window, CPU, one thread) with the package
found first in ``--package`` (this checkout by default; give another checkout's root to
measure its code the same way), sends the hostile request, and reads the server's peak
RSS (``VmHWM``) before and after; a thread polls ``/health`` every 50 ms meanwhile.

- ``empty-documents``: a 32 MiB body of 11 million empty documents (issue 20 item 8);
- ``max-request``: 1,000 documents of 8,000 tokens, the documented maximum (item 11);
- ``random-labels``: 1,000 requests with made-up methods and paths; ``/metrics`` size (9);
- ``slow-headers``: 200 connections that never finish their headers; a new client's
  latency, and how many of them the server has closed 12 s later (10).

    python benchmarks/faults_serve.py [--package DIR] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from rerank_plugins.testing import free_port, make_modernbert_checkpoint, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]


def _peak_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


@contextmanager
def server(model: Path, package: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(package),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "rerank_plugins", "serve", "--model", str(model)]
    argv += ["--device", "cpu", "--port", str(port), "--log-level", "error"]
    log = model.parent / f"server-{port}.log"
    with log.open("wb") as sink:
        # cwd: ``python -m`` puts it first on sys.path, before PYTHONPATH.
        process = subprocess.Popen(
            argv, env=env, cwd=package, stdout=sink, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/health", process, log=log, seconds=180)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def _watch_health(url: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.get(f"{url}/health")
            except httpx.HTTPError:
                pass
            worst[0] = max(worst[0], time.perf_counter() - start)
            time.sleep(0.05)


def _timed_post(url: str, pid: int, path: str, body: bytes) -> dict[str, Any]:
    before = _peak_kib(pid)
    stop, worst = threading.Event(), [0.0]
    watcher = threading.Thread(target=_watch_health, args=(url, stop, worst))
    watcher.start()
    start = time.perf_counter()
    answer = httpx.post(
        url + path, content=body, headers={"content-type": "application/json"}, timeout=600
    )
    wall = time.perf_counter() - start
    stop.set()
    watcher.join()
    return {
        "status": answer.status_code,
        "answer": answer.text[:120],
        "wall_s": round(wall, 2),
        "health_worst_s": round(worst[0], 2),
        "peak_rss_growth_mib": round((_peak_kib(pid) - before) / 1024, 1),
    }


def empty_documents(url: str, pid: int) -> dict[str, Any]:
    n = (32 * 2**20 - 40) // 3
    body = b'{"query":"q","documents":[' + b'"",' * (n - 1) + b'""]}'
    return _timed_post(url, pid, "/v1/rerank", body)


def max_request(url: str, pid: int) -> dict[str, Any]:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(50)]
    docs = [" ".join(rng.choices(words, k=8000)) for _ in range(1000)]
    body = json.dumps({"query": "q", "documents": docs}).encode()
    return {**_timed_post(url, pid, "/v1/rerank", body), "body_mib": round(len(body) / 2**20, 1)}


def random_labels(url: str, pid: int) -> dict[str, Any]:
    rng = random.Random(0)
    before = len(httpx.get(f"{url}/metrics").content)
    start = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for _ in range(1000):
            method = "".join(rng.choices(string.ascii_uppercase, k=6))
            path = "/" + "".join(rng.choices(string.ascii_letters, k=12))
            client.request(method, url + path)
    text = httpx.get(f"{url}/metrics").text
    series = sum(ln.startswith("rerank_http_requests_total{") for ln in text.splitlines())
    return {
        "wall_s": round(time.perf_counter() - start, 2),
        "metrics_bytes_before": before,
        "metrics_bytes_after": len(text.encode()),
        "request_series": series,
    }


def slow_headers(url: str, pid: int) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    hanging = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    for sock in hanging:
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
    start = time.perf_counter()
    status = httpx.post(
        f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=30
    ).status_code
    latency = time.perf_counter() - start
    time.sleep(12)
    closed = 0
    for sock in hanging:
        sock.settimeout(0.05)
        try:
            closed += sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            pass
        sock.close()
    return {"new_client_status": status, "new_client_s": round(latency, 3), "closed_of_200": closed}


PROBES: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "empty-documents": empty_documents,
    "max-request": max_request,
    "random-labels": random_labels,
    "slow-headers": slow_headers,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=ROOT, help="checkout to measure")
    parser.add_argument("--probe", action="append", choices=sorted(PROBES))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {"package": str(args.package)}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_modernbert_checkpoint(Path(tmp) / "tiny")
        for name in args.probe or PROBES:
            with server(model, args.package) as (url, pid):
                results[name] = PROBES[name](url, pid)
            print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
