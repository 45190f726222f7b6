"""rerank_plugins.testing.servers: the helpers the serve tests, the serving benchmark and
the Infinity integration tests share to start server processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins.testing import free_port, wait_until_healthy


def test_a_free_port_can_be_bound() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "print('port in use'); raise SystemExit(3)"], stdout=out
        )
    process.wait(timeout=60)
    with pytest.raises(RuntimeError, match=r"(?s)demo exited with 3:.*port in use"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}/health", process, log=log, name="demo")


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="not ready after 1s"):
            wait_until_healthy(f"http://127.0.0.1:{free_port()}/health", process, seconds=1)
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.slow
def test_the_fake_rerank_server_runs_with_python_dash_m() -> None:
    from rerank_plugins.remote import RemoteScorer
    from rerank_plugins.testing.fake_server import fake_probability

    process = subprocess.Popen(
        [sys.executable, "-m", "rerank_plugins.testing.fake_server", "--dialect", "tei"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        with RemoteScorer(url, dialect="tei", api_key_env=None) as scorer:
            scores = scorer.score("w1 w2", ["w1 w3", "w4"])
        assert [s.value for s in scores] == pytest.approx(
            [fake_probability("w1 w2", "w1 w3"), fake_probability("w1 w2", "w4")]
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_the_fake_rerank_server_stops_on_a_signal_even_started_in_the_background(
    stop: signal.Signals,
) -> None:
    # A non-interactive shell starts a background job with SIGINT ignored; the server's
    # children inherit that. It must stop anyway, and say what it served.
    process = subprocess.Popen(
        [sys.executable, "-m", "rerank_plugins.testing.fake_server"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        process.send_signal(stop)
        out, _ = process.communicate(timeout=30)
        assert out.strip().splitlines()[-1].startswith("served 0 requests")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
