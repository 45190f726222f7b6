"""A refused connection on loopback fails fast; elsewhere it is retried as before.

Nothing listening on this machine's port does not start listening in the next seconds of
back-off (the default policy waits 3.75 s or more over its four retries): the scorer
answers :class:`EndpointConnectionError` at once. A refusal from another host may be a
server restarting behind a load balancer, and is still retried.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from rerank_plugins.errors import EndpointConnectionError
from rerank_plugins.remote import RemoteScorer, RetryPolicy

DEFAULT_BACKOFF_FLOOR = sum(0.5 * 0.5 * 2**n for n in range(4))  # 3.75 s: jitter at its least


def closed_port(family: socket.AddressFamily = socket.AF_INET) -> int:
    """A port nothing listens on (bound, then released)."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def has_ipv6_loopback() -> bool:
    try:
        closed_port(socket.AF_INET6)
    except OSError:
        return False
    return True


def url_for(host: str) -> str:
    family = socket.AF_INET6 if host == "[::1]" else socket.AF_INET
    return f"http://{host}:{closed_port(family)}/v1"


HOSTS = [
    "127.0.0.1",
    "localhost",
    pytest.param(
        "[::1]",
        marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here"),
    ),
]


@pytest.mark.parametrize("host", HOSTS)
def test_a_refused_loopback_connection_fails_fast(host: str) -> None:
    scorer = RemoteScorer(url_for(host), api_key_env=None)  # the default retry policy
    started = time.perf_counter()
    with pytest.raises(EndpointConnectionError, match="not retried") as info:
        scorer.score("q", ["a", "b"])
    elapsed = time.perf_counter() - started
    scorer.close()
    assert elapsed < DEFAULT_BACKOFF_FLOOR / 4, f"{elapsed:.2f}s: the refusal was retried"
    assert info.value.indices == (0, 1)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("host", HOSTS)
async def test_a_refused_loopback_connection_fails_fast_async(host: str) -> None:
    scorer = RemoteScorer(url_for(host), api_key_env=None)
    started = time.perf_counter()
    with pytest.raises(EndpointConnectionError, match="not retried"):
        await scorer.ascore("q", ["a"])
    elapsed = time.perf_counter() - started
    await scorer.aclose()
    assert elapsed < DEFAULT_BACKOFF_FLOOR / 4, f"{elapsed:.2f}s: the refusal was retried"


def refusing(seen: list[httpx.Request]) -> httpx.MockTransport:
    """A transport that fails like a refused connect (ECONNREFUSED under httpx's error)."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as exc:
            raise httpx.ConnectError("[Errno 111] Connection refused") from exc

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("base_url", "attempts"),
    [
        ("http://127.0.0.1:8000/v1", 1),
        ("http://127.8.9.10:8000/v1", 1),  # all of 127.0.0.0/8 is loopback
        ("http://LOCALHOST:8000/v1", 1),
        ("http://10.0.0.7:8000/v1", 4),  # another host: retried as before
        ("https://rerank.example.com/v1", 4),
    ],
)
def test_only_a_loopback_refusal_skips_the_retries(base_url: str, attempts: int) -> None:
    seen: list[httpx.Request] = []
    waits: list[float] = []
    scorer = RemoteScorer(
        base_url,
        api_key_env=None,
        retry=RetryPolicy(max_retries=3, sleep=waits.append, rng=lambda: 0.0),
        client=httpx.Client(transport=refusing(seen)),
    )
    with pytest.raises(EndpointConnectionError, match="could not be reached"):
        scorer.score("q", ["a"])
    assert len(seen) == attempts
    assert len(waits) == attempts - 1


def test_other_connect_errors_on_loopback_are_still_retried() -> None:
    # A reset or an unreachable network is not "nothing listens here".
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectError("[Errno 104] Connection reset by peer")

    waits: list[float] = []
    scorer = RemoteScorer(
        "http://127.0.0.1:8000/v1",
        api_key_env=None,
        retry=RetryPolicy(max_retries=2, sleep=waits.append, rng=lambda: 0.0),
        client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(EndpointConnectionError, match="after 3 attempts"):
        scorer.score("q", ["a"])
    assert len(seen) == 3 and waits == [0.25, 0.5]
