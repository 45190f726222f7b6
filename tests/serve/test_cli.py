"""``rerank-plugins serve`` as a process: starts warm, serves, shuts down gracefully."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rerank_plugins.cli import main
from rerank_plugins.testing import random_text

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_workers_other_than_one_are_refused_with_the_reason(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(modernbert_dir), "--workers", "2"]) == 2
    assert "one process serves one device" in capsys.readouterr().err


def test_an_option_the_model_does_not_take_is_a_clear_error(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--model", str(modernbert_dir), "--device", "cpu", "--layer", "2"])
    assert code == 2
    assert "layer" in capsys.readouterr().err


def metric(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    modernbert_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "rerank_plugins", "serve",
        "--model", str(modernbert_dir), "--device", "cpu", "--port", str(port),
        "--max-batch-tokens", "64", "--max-queued-tokens", "1000000", "--log-level", "info",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        # Loaded and warmed before the port accepted connections.
        assert text.index("warmed up") < text.index("Uvicorn running")

        rng = random.Random(0)
        requests = [[random_text(rng, 25) for _ in range(40)] for _ in range(12)]
        answers: list[httpx.Response | Exception] = []

        def call(docs: list[str]) -> None:
            try:
                answers.append(
                    httpx.post(
                        f"{url}/v1/rerank", json={"query": "w1 w2", "documents": docs}, timeout=120
                    )
                )
            except Exception as exc:  # recorded: the assertion below names it
                answers.append(exc)

        threads = [threading.Thread(target=call, args=(docs,)) for docs in requests]
        for t in threads:
            t.start()
        # SIGTERM once every request has been accepted and at least two are in flight.
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{url}/metrics").text
            in_flight = metric(text, "rerank_http_requests_in_flight") - 1  # this scrape
            done = metric(
                text, 'rerank_http_requests_total{method="POST",path="/v1/rerank",status="200"}'
            )
            if in_flight >= 2 and in_flight + done == len(requests):
                break
            assert done < len(requests) - 1, "the requests finished before the signal"
            assert time.monotonic() < deadline, "the requests never got in flight"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert process.wait(timeout=120) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert len(answers) == len(requests)
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    assert all(len(a.json()["results"]) == 40 for a in answers if isinstance(a, httpx.Response))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_command_line_imports_no_server_stack_until_serve_runs() -> None:
    code = (
        "import sys, rerank_plugins.cli, rerank_plugins.serve, rerank_plugins.serve.cli\n"
        "print([m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'torch') "
        "if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
