"""Slow and endless clients against a real uvicorn on 127.0.0.1 (issue 20 item 10)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from rerank_plugins.serve import create_app
from rerank_plugins.serve.connections import ConnectionLimits, uvicorn_config
from rerank_plugins.testing import free_port
from rerank_plugins.testing.function_scorer import FunctionScorer

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    import uvicorn

    app = create_app(FunctionScorer(lambda q, d: 1.0), warmup=False, body_timeout=1.0)
    limits = ConnectionLimits(header_timeout=HEADER_TIMEOUT, max_header_bytes=8192)
    config = uvicorn_config(
        app, limits=limits, host="127.0.0.1", port=free_port(), log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{config.port}"
    server.should_exit = True
    thread.join(timeout=30)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def test_new_clients_are_served_while_200_slow_connections_hang(url: str) -> None:
    hanging = [_connect(url) for _ in range(200)]
    for sock in hanging:
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")  # headers that never end
    start = time.perf_counter()
    answer = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]}, timeout=5)
    assert answer.status_code == 200
    assert time.perf_counter() - start < 1.0
    # and the hanging ones are closed once their header time is over
    time.sleep(HEADER_TIMEOUT + 0.5)
    for sock in hanging:
        sock.settimeout(2)
    assert all(_closed(sock) for sock in hanging)
    for sock in hanging:
        sock.close()


def test_headers_sent_a_byte_at_a_time_are_cut_at_the_header_timeout(url: str) -> None:
    sock = _connect(url)
    start = time.perf_counter()
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    closed_after = None
    for byte in request:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.perf_counter() - start
            break
        time.sleep(0.05)
    sock.close()
    assert closed_after is not None and closed_after < HEADER_TIMEOUT + 1.5


def test_headers_over_the_limit_are_refused(url: str) -> None:
    answer = httpx.get(f"{url}/health", headers={"X-Big": "a" * 10_000}, timeout=5)
    assert answer.status_code == 400


def test_a_body_that_never_arrives_gets_408_json(url: str) -> None:
    sock = _connect(url)
    sock.sendall(
        b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"query":'
    )
    sock.settimeout(5)
    reply = sock.recv(4096)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"error_type":"Validation"' in reply and b"did not arrive within 1 s" in reply
