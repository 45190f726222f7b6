"""rerank_plugins.remote.outcome: answers and transport errors classified without I/O.

Responses here are built in memory (no transport, no client): the classification is a
pure function of the endpoint, the answer, the retries done and the batch's positions.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rerank_plugins.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointInputTooLongError,
    EndpointStatusError,
    EndpointTimeoutError,
    MalformedResponseError,
)
from rerank_plugins.remote import redaction
from rerank_plugins.remote.config import Endpoint, configure
from rerank_plugins.remote.outcome import (
    Retry,
    Split,
    after_response,
    after_transport_error,
    combine,
    describe,
)
from rerank_plugins.remote.retry import RetryPolicy
from rerank_plugins.wire import TOKENS_HEADER, TRUNCATED_HEADER

URL = "http://127.0.0.1:9/v1/rerank"


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    built, _, registered = configure(
        "http://127.0.0.1:9/v1",
        dialect="cohere",
        model=None,
        api_key="sk-outcome-secret",
        api_key_env=None,
        overflow="truncate",
        score_kind=None,
        max_batch_size=None,
        timeout=None,
        max_response_bytes=None,
        retry=RetryPolicy(max_retries=2, backoff=1.0, max_retry_after=10.0, rng=lambda: 0.0),
        headers=None,
        extra_body=None,
    )
    yield built
    redaction.forget(registered)


def answer(status: int, *, json: Any = None, text: str = "", **headers: str) -> httpx.Response:
    request = httpx.Request("POST", URL)
    if json is not None:
        return httpx.Response(status, json=json, headers=headers, request=request)
    return httpx.Response(status, text=text, headers=headers, request=request)


def cohere(scores: list[float]) -> dict[str, Any]:
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])  # servers sort by score
    return {"results": [{"index": i, "relevance_score": scores[i]} for i in ranked]}


def test_a_2xx_answer_gives_scores_in_request_order(endpoint: Endpoint) -> None:
    scores = after_response(endpoint, answer(200, json=cohere([0.1, 0.9, 0.5])), 0, [4, 5, 6])
    assert isinstance(scores, list)
    assert [s.value for s in scores] == [0.1, 0.9, 0.5]
    assert [(s.kind, s.tokens, s.truncated) for s in scores] == [("probability", None, False)] * 3


def test_the_truncation_report_flags_documents_and_counts_tokens(endpoint: Endpoint) -> None:
    response = answer(
        200, json=cohere([0.1, 0.9]), **{TRUNCATED_HEADER: "1", TOKENS_HEADER: "7,512"}
    )
    scores = after_response(endpoint, response, 0, [0, 1])
    assert isinstance(scores, list)
    assert [(s.tokens, s.truncated) for s in scores] == [(7, False), (512, True)]


def test_a_malformed_truncation_report_is_ignored_not_fatal(endpoint: Endpoint) -> None:
    response = answer(200, json=cohere([0.1, 0.9]), **{TRUNCATED_HEADER: "5"})
    scores = after_response(endpoint, response, 0, [0, 1])
    assert isinstance(scores, list)
    assert [(s.tokens, s.truncated) for s in scores] == [(None, False)] * 2


def test_a_2xx_answer_that_is_not_json_is_malformed(endpoint: Endpoint) -> None:
    with pytest.raises(MalformedResponseError, match="not JSON for documents 2-3") as info:
        after_response(endpoint, answer(200, text="<html>"), 0, [2, 3])
    assert info.value.indices == (2, 3)


def test_a_503_is_a_retry_after_the_policys_backoff(endpoint: Endpoint) -> None:
    step = after_response(endpoint, answer(503, text="busy"), 1, [0])
    assert isinstance(step, Retry)
    assert step.delay == 1.0  # backoff 1.0 * 2**1, jitter factor 0.5
    assert isinstance(step.error, EndpointStatusError) and step.error.status_code == 503


def test_retry_after_is_honoured(endpoint: Endpoint) -> None:
    step = after_response(endpoint, answer(429, text="slow down", **{"Retry-After": "3"}), 0, [0])
    assert isinstance(step, Retry) and step.delay == 3.0


def test_a_retry_after_beyond_the_policys_ceiling_ends_the_retries(endpoint: Endpoint) -> None:
    with pytest.raises(EndpointStatusError, match="retry after 60s, more than max_retry_after"):
        after_response(endpoint, answer(503, text="", **{"Retry-After": "60"}), 0, [0])


def test_the_last_retry_raises_naming_the_attempts(endpoint: Endpoint) -> None:
    with pytest.raises(EndpointStatusError, match=r"after 3 attempts") as info:
        after_response(endpoint, answer(503, text="busy"), 2, [0, 1])
    assert info.value.indices == (0, 1)


def test_a_413_splits_the_batch_in_halves(endpoint: Endpoint) -> None:
    step = after_response(endpoint, answer(413, text="payload too large"), 0, [0, 1, 2, 3])
    assert isinstance(step, Split) and step.size == 2


def test_a_stated_batch_limit_sets_the_split_size(endpoint: Endpoint) -> None:
    text = "List should have at most 3 items after validation"
    step = after_response(endpoint, answer(422, text=text), 0, list(range(10)))
    assert isinstance(step, Split) and step.size == 3


def test_a_length_refusal_splits_to_find_the_documents_then_raises(endpoint: Endpoint) -> None:
    text = "input length exceeds the maximum of 512 tokens"
    step = after_response(endpoint, answer(400, text=text), 0, [0, 1, 2])
    assert isinstance(step, Split) and step.size == 2
    assert isinstance(step.error, EndpointInputTooLongError)
    with pytest.raises(EndpointInputTooLongError, match="truncate_prompt_tokens") as info:
        after_response(endpoint, answer(400, text=text), 0, [2])
    assert info.value.indices == (2,)


def test_other_4xx_answers_fail_for_good_with_a_scrubbed_excerpt(endpoint: Endpoint) -> None:
    with pytest.raises(EndpointStatusError, match="answered 404") as info:
        after_response(endpoint, answer(404, text="no route; key sk-outcome-secret"), 0, [7])
    assert "sk-outcome-secret" not in str(info.value)
    assert info.value.body == "no route; key ***"


def test_a_network_error_is_retried_until_the_last_attempt(endpoint: Endpoint) -> None:
    exc = httpx.ReadError("connection reset")
    step = after_transport_error(endpoint, exc, 0, [0])
    assert isinstance(step, Retry) and isinstance(step.error, EndpointConnectionError)
    with pytest.raises(EndpointConnectionError, match="after 3 attempts"):
        after_transport_error(endpoint, exc, 2, [0])


def test_a_timeout_is_an_endpoint_timeout(endpoint: Endpoint) -> None:
    step = after_transport_error(endpoint, httpx.ReadTimeout("slow"), 0, [0])
    assert isinstance(step, Retry) and isinstance(step.error, EndpointTimeoutError)


def test_a_tls_failure_is_not_retried(endpoint: Endpoint) -> None:
    try:
        raise httpx.ConnectError("handshake") from ssl.SSLCertVerificationError("bad cert")
    except httpx.ConnectError as exc:
        with pytest.raises(EndpointConnectionError, match="could not be reached"):
            after_transport_error(endpoint, exc, 0, [0])


def test_a_refused_connection_on_loopback_is_not_retried(endpoint: Endpoint) -> None:
    try:
        raise httpx.ConnectError("refused") from ConnectionRefusedError(111, "refused")
    except httpx.ConnectError as exc:
        with pytest.raises(EndpointConnectionError, match="refused loopback connection"):
            after_transport_error(endpoint, exc, 0, [0])


def test_an_unsupported_url_is_not_retried(endpoint: Endpoint) -> None:
    with pytest.raises(EndpointConnectionError):
        after_transport_error(endpoint, httpx.UnsupportedProtocol("ftp"), 0, [0])


def test_several_failed_batches_become_one_error_naming_every_document() -> None:
    first = EndpointStatusError("a", status_code=503, body="", indices=[0, 1])
    second = EndpointStatusError("b", status_code=503, body="", indices=[4])
    error = combine([first, second])
    assert isinstance(error, EndpointStatusError)
    assert error.indices == (0, 1, 4) and error.__cause__ is first
    mixed = combine([first, EndpointTimeoutError("c", indices=[9])])
    assert type(mixed) is EndpointError and mixed.indices == (0, 1, 9)


def test_describe_names_ranges() -> None:
    assert describe([4]) == "document 4"
    assert describe([0, 1, 2, 5, 7, 8]) == "documents 0-2, 5, 7-8"
