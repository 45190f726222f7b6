"""RemoteScorer against a server that misbehaves on purpose (raw HTTP on 127.0.0.1).

Every fault ends in one typed error naming the documents (or in correct scores), on the
sync and the async path, within the call's deadline, and without reading more than the
response-size cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from rerank_plugins.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointStatusError,
    EndpointTimeoutError,
    MalformedResponseError,
    ResponseTooLargeError,
)
from rerank_plugins.remote import RemoteScorer, RetryPolicy
from rerank_plugins.testing.fake_server import fake_probability
from rerank_plugins.testing.hostile_server import HostileServer

DOCS = ["w1 w2", "w3"]

# fault -> the error it must end in (None: correct scores)
OUTCOMES: dict[str, type[EndpointError] | None] = {
    "ok": None,
    "utf16-body": None,
    "drip": EndpointTimeoutError,
    "stall": EndpointTimeoutError,
    "endless": ResponseTooLargeError,
    "large-declared": ResponseTooLargeError,
    "large-chunked": ResponseTooLargeError,
    "gzip-bomb": ResponseTooLargeError,
    "gzip-lie": MalformedResponseError,
    "unknown-encoding": MalformedResponseError,
    "malformed-json": MalformedResponseError,
    "deep-nesting": MalformedResponseError,
    "huge-number": MalformedResponseError,
    "nan-score": MalformedResponseError,
    "latin1-body": MalformedResponseError,
    "bogus-charset-error": EndpointStatusError,
    "close-early": EndpointConnectionError,
}


@pytest.fixture(scope="module")
def server() -> Iterator[HostileServer]:
    with HostileServer() as hostile:
        yield hostile


def scorer_for(server: HostileServer, fault: str) -> RemoteScorer:
    return RemoteScorer(
        server.url(fault),
        api_key_env=None,
        deadline=1.5,
        retry=RetryPolicy(max_retries=1, backoff=0.01),
    )


def check(fault: str, run: object) -> None:
    expected = OUTCOMES[fault]
    start = time.monotonic()
    if expected is None:
        scores = run()  # type: ignore[operator]
        assert [s.value for s in scores] == pytest.approx([fake_probability("q", d) for d in DOCS])
        return
    with pytest.raises(expected) as info:
        run()  # type: ignore[operator]
    assert info.value.indices and set(info.value.indices) <= {0, 1}  # names the documents
    assert time.monotonic() - start < 1.5 + 1.0  # the deadline holds, retries included


@pytest.mark.parametrize("fault", sorted(OUTCOMES))
def test_each_fault_is_a_typed_error_on_the_sync_path(server: HostileServer, fault: str) -> None:
    with scorer_for(server, fault) as scorer:
        check(fault, lambda: scorer.score("q", DOCS))


@pytest.mark.parametrize("fault", sorted(OUTCOMES))
def test_each_fault_is_a_typed_error_on_the_async_path(server: HostileServer, fault: str) -> None:
    async def main() -> object:
        async with scorer_for(server, fault) as scorer:
            return await scorer.ascore("q", DOCS)

    check(fault, lambda: asyncio.run(main()))


def test_a_response_cap_is_configurable(server: HostileServer) -> None:
    scorer = RemoteScorer(server.url("ok"), api_key_env=None, max_response_bytes=10)
    with pytest.raises(ResponseTooLargeError, match="max_response_bytes=10"):
        scorer.score("q", DOCS)
    scorer.close()


def test_the_deadline_covers_retries(server: HostileServer) -> None:
    # stall: every attempt times out at the read timeout; retries must not extend the call.
    scorer = RemoteScorer(
        server.url("stall"), api_key_env=None, timeout=0.4, deadline=1.0,
        retry=RetryPolicy(max_retries=50, backoff=0.0),
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(EndpointTimeoutError):
        scorer.score("q", DOCS)
    assert time.monotonic() - start < 2.0
    scorer.close()


def test_a_dripping_body_is_a_timed_out_attempt_and_is_retried(server: HostileServer) -> None:
    before = server.seen.count("drip")
    scorer = RemoteScorer(
        server.url("drip"), api_key_env=None, timeout=0.6, deadline=10.0,
        retry=RetryPolicy(max_retries=1, backoff=0.0),
    )  # fmt: skip
    with pytest.raises(EndpointTimeoutError, match="2 attempts"):
        scorer.score("q", DOCS)
    scorer.close()
    assert server.seen.count("drip") - before == 2
