"""RemoteScorer's behaviour: retries, splitting, concurrency, keys, timeouts, errors.

Servers are ``httpx.MockTransport`` handlers or the shipped ``FakeRerankServer``; sleeps
go through an injected ``RetryPolicy`` so nothing waits for real.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rerank_plugins import load_scorer
from rerank_plugins.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointInputTooLongError,
    EndpointStatusError,
    EndpointTimeoutError,
    InputTooLongError,
    InvalidInputError,
    MalformedResponseError,
)
from rerank_plugins.remote import DEFAULT_TIMEOUT, RemoteScorer, RetryPolicy
from rerank_plugins.remote.retry import parse_retry_after
from rerank_plugins.testing.fake_server import FakeRerankServer, fake_probability

QUERY = "w1 w2"
KEY = "sk-test-0123456789abcdef"


class Sleeps:
    """Records the waits a RetryPolicy asks for, instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def policy(self, **options: Any) -> RetryPolicy:
        return RetryPolicy(sleep=self.sleep, asleep=self.asleep, rng=lambda: 0.0, **options)


@pytest.fixture()
def sleeps() -> Sleeps:
    return Sleeps()


def docs(n: int) -> list[str]:
    return [f"w{i % 300} w{(7 * i) % 300} w1" for i in range(n)]


def expected(documents: list[str]) -> list[float]:
    return [fake_probability(QUERY, d) for d in documents]


def make(
    handler: Callable[[httpx.Request], httpx.Response] | FakeRerankServer,
    sleeps: Sleeps | None = None,
    **options: Any,
) -> RemoteScorer:
    fn = handler.handle if isinstance(handler, FakeRerankServer) else handler
    transport = httpx.MockTransport(fn)
    options.setdefault("api_key_env", None)
    if sleeps is not None:
        options.setdefault("retry", sleeps.policy())
    return RemoteScorer(
        options.pop("base_url", "http://127.0.0.1:8000/v1"),
        client=httpx.Client(transport=transport),
        async_client=httpx.AsyncClient(transport=transport),
        **options,
    )


def scripted(*steps: httpx.Response | Exception, then: FakeRerankServer | None = None):
    """A handler that plays ``steps`` in order, then lets ``then`` answer."""
    queue = list(steps)
    server = then or FakeRerankServer()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if queue:
            step = queue.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return server.handle(request)

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


# -- keys -------------------------------------------------------------------------------


def test_the_api_key_is_sent_as_a_bearer_token(sleeps: Sleeps) -> None:
    server = FakeRerankServer(api_key=KEY)
    scorer = make(server, sleeps, api_key=KEY)
    assert [s.value for s in scorer.score(QUERY, docs(3))] == expected(docs(3))


def test_the_api_key_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps
) -> None:
    monkeypatch.setenv("RERANK_API_KEY", KEY)
    server = FakeRerankServer(api_key=KEY)
    scorer = make(server, sleeps, api_key_env="RERANK_API_KEY")
    assert scorer.api_key is not None and scorer.api_key.get_secret_value() == KEY
    scorer.score(QUERY, docs(2))
    monkeypatch.setenv("MY_RERANK_KEY", "other")
    assert make(server, sleeps, api_key_env="MY_RERANK_KEY").api_key is not None


def test_no_key_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    handler = scripted()
    make(handler, api_key_env="RERANK_API_KEY").score(QUERY, docs(2))
    assert "authorization" not in handler.seen[0].headers  # type: ignore[attr-defined]


def test_the_key_never_shows_in_repr_logs_or_errors(
    caplog: pytest.LogCaptureFixture, sleeps: Sleeps
) -> None:
    # A server that echoes the Authorization header into its error bodies.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401 if sleeps.waits else 503,
            json={"detail": f"bad credentials: {request.headers['authorization']}"},
        )

    caplog.set_level(logging.DEBUG)
    scorer = make(handler, sleeps, api_key=KEY)
    with pytest.raises(EndpointStatusError) as info:
        scorer.score(QUERY, docs(2))
    assert info.value.status_code == 401
    for text in (repr(scorer), str(info.value), info.value.body, caplog.text):
        assert KEY not in text
    assert "Bearer ***" in info.value.body
    assert "SecretStr('**********')" in repr(scorer)
    assert KEY not in repr(vars(scorer))  # not even in a plain attribute


def test_passwords_and_query_strings_of_the_url_are_not_shown() -> None:
    scorer = RemoteScorer("https://user:hunter2@h/v1?key=abc", api_key_env=None)
    assert scorer.url == "https://user:***@h/v1/rerank"
    assert "hunter2" not in repr(scorer) and "abc" not in repr(scorer)
    with pytest.raises(InvalidInputError, match="one or the other"):
        RemoteScorer("https://user:hunter2@h/v1", api_key=KEY)


def test_an_api_key_over_plain_http_to_another_host_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        RemoteScorer("http://127.0.0.1:8000", api_key=KEY)
        RemoteScorer("https://rerank.example.com/v1", api_key=KEY)
        assert "unencrypted" not in caplog.text
        RemoteScorer("http://rerank.example.com/v1", api_key=KEY)
    assert "unencrypted" in caplog.text and KEY not in caplog.text


def test_user_headers_and_extra_body_are_sent(sleeps: Sleeps) -> None:
    handler = scripted()
    scorer = make(
        handler,
        sleeps,
        headers={"X-Tenant": "blue"},
        extra_body={"truncate_prompt_tokens": -1, "query": "ignored"},
    )
    scorer.score(QUERY, docs(2))
    request = handler.seen[0]  # type: ignore[attr-defined]
    assert request.headers["x-tenant"] == "blue"
    body = json.loads(request.content)
    assert body["truncate_prompt_tokens"] == -1
    assert body["query"] == QUERY  # the dialect's own fields win


@pytest.mark.parametrize("field", ["top_n", "top_k"])
def test_top_n_in_extra_body_is_refused(field: str) -> None:
    with pytest.raises(InvalidInputError, match="every document"):
        RemoteScorer("http://127.0.0.1:1", extra_body={field: 3})


# -- retries ----------------------------------------------------------------------------


def test_429_with_retry_after_is_retried_after_the_asked_delay(sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "slow"}))
    scores = make(handler, sleeps).score(QUERY, docs(5))
    assert [s.value for s in scores] == expected(docs(5))
    assert sleeps.waits == [2.0]
    assert len(handler.seen) == 2  # type: ignore[attr-defined]


def test_retry_after_as_an_http_date_is_honoured(sleeps: Sleeps) -> None:
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    handler = scripted(httpx.Response(503, headers={"Retry-After": soon}))
    make(handler, sleeps).score(QUERY, docs(2))
    assert len(sleeps.waits) == 1 and 27.0 <= sleeps.waits[0] <= 33.0


def test_a_retry_after_beyond_the_cap_ends_the_retries(sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(EndpointStatusError, match="3600s") as info:
        make(handler, sleeps).score(QUERY, docs(3))
    assert info.value.status_code == 429 and info.value.indices == (0, 1, 2)
    assert sleeps.waits == []


def test_503_then_success_loses_nothing(sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(503, text="upstream busy"), httpx.Response(502))
    scores = make(handler, sleeps).score(QUERY, docs(10))
    assert [s.value for s in scores] == expected(docs(10))
    assert len(sleeps.waits) == 2


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(status: int, sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(status))
    make(handler, sleeps).score(QUERY, docs(2))
    assert len(handler.seen) == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422, 501])
def test_other_errors_are_not_retried_and_name_every_document(status: int, sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(status, json={"detail": "nope " * 200}))
    with pytest.raises(EndpointStatusError) as info:
        make(handler, sleeps).score(QUERY, docs(4))
    error = info.value
    assert error.status_code == status and error.indices == (0, 1, 2, 3)
    assert error.body.startswith('{"detail":"nope') and len(error.body) <= 303
    assert f"answered {status}" in str(error) and "documents 0-3" in str(error)
    assert len(handler.seen) == 1  # type: ignore[attr-defined]
    assert sleeps.waits == []


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(backoff=0.5, max_backoff=4.0, rng=lambda: 0.999)
    waits = [policy.delay(n) for n in range(6)]
    assert waits == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], rel=1e-3)
    low = RetryPolicy(backoff=0.5, max_backoff=4.0, rng=lambda: 0.0)
    assert [low.delay(n) for n in range(3)] == [0.25, 0.5, 1.0]  # jitter keeps at least half


def test_retries_give_up_after_max_retries(sleeps: Sleeps) -> None:
    handler = scripted(*[httpx.Response(503) for _ in range(10)])
    with pytest.raises(EndpointStatusError, match="after 4 attempts") as info:
        make(handler, sleeps, retry=sleeps.policy(max_retries=3)).score(QUERY, docs(2))
    assert info.value.status_code == 503
    assert len(handler.seen) == 4  # type: ignore[attr-defined]
    assert sleeps.waits == [0.25, 0.5, 1.0]


def test_timeouts_are_retried_then_reported(sleeps: Sleeps) -> None:
    handler = scripted(*[httpx.ReadTimeout("read timed out") for _ in range(10)])
    with pytest.raises(EndpointTimeoutError, match="timed out") as info:
        make(handler, sleeps, retry=sleeps.policy(max_retries=2)).score(QUERY, docs(3))
    assert info.value.indices == (0, 1, 2)
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert len(handler.seen) == 3  # type: ignore[attr-defined]


def test_a_timeout_then_success_loses_nothing(sleeps: Sleeps) -> None:
    handler = scripted(httpx.ConnectTimeout("slow connect"), httpx.ReadTimeout("slow read"))
    scores = make(handler, sleeps).score(QUERY, docs(6))
    assert [s.value for s in scores] == expected(docs(6))


def test_connection_errors_are_retried_then_reported(sleeps: Sleeps) -> None:
    handler = scripted(httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed"))
    assert len(make(handler, sleeps).score(QUERY, docs(2))) == 2
    failing = scripted(*[httpx.ConnectError("[Errno 111] refused") for _ in range(9)])
    with pytest.raises(EndpointConnectionError, match="could not be reached"):
        make(failing, sleeps, retry=sleeps.policy(max_retries=1)).score(QUERY, docs(2))


def test_an_unreachable_real_port_is_a_connection_error() -> None:
    scorer = RemoteScorer(
        "http://127.0.0.1:9/v1", api_key_env=None, retry=RetryPolicy(max_retries=1, backoff=0.0)
    )
    with pytest.raises(EndpointConnectionError) as info:
        scorer.score(QUERY, ["w1"])
    assert info.value.indices == (0,)
    scorer.close()


# -- timeouts and clients -----------------------------------------------------------------


def test_owned_clients_carry_the_default_timeouts() -> None:
    scorer = RemoteScorer("http://127.0.0.1:9/v1")
    assert scorer._sync_client().timeout == DEFAULT_TIMEOUT
    assert DEFAULT_TIMEOUT.read == 300.0 and DEFAULT_TIMEOUT.connect == 10.0
    scorer.close()


def test_an_explicit_timeout_applies_to_every_request() -> None:
    handler = scripted()
    make(handler, timeout=12.5).score(QUERY, docs(1))
    assert handler.seen[0].extensions["timeout"]["read"] == 12.5  # type: ignore[attr-defined]


def test_a_client_passed_in_keeps_its_timeout_unless_it_has_none() -> None:
    handler = scripted()
    transport = httpx.MockTransport(handler)
    RemoteScorer("http://h/v1", client=httpx.Client(transport=transport, timeout=7.0)).score(
        QUERY, docs(1)
    )
    RemoteScorer("http://h/v1", client=httpx.Client(transport=transport, timeout=None)).score(
        QUERY, docs(1)
    )
    first, second = handler.seen  # type: ignore[attr-defined]
    assert first.extensions["timeout"]["read"] == 7.0
    assert second.extensions["timeout"] == DEFAULT_TIMEOUT.as_dict()


async def test_clients_passed_in_are_not_closed_and_owned_ones_are() -> None:
    transport = httpx.MockTransport(FakeRerankServer().handle)
    client, aclient = httpx.Client(transport=transport), httpx.AsyncClient(transport=transport)
    async with RemoteScorer("http://h/v1", client=client, async_client=aclient) as scorer:
        scorer.score(QUERY, docs(2))
        await scorer.ascore(QUERY, docs(2))
    assert not client.is_closed and not aclient.is_closed
    owned = RemoteScorer("http://127.0.0.1:9/v1")
    sync_client = owned._sync_client()
    async_client = owned._async_http_client()
    await owned.aclose()
    assert sync_client.is_closed and async_client.is_closed


def test_owned_clients_verify_tls_and_do_not_follow_redirects() -> None:
    scorer = RemoteScorer("https://rerank.example.com/v1")
    client = scorer._sync_client()
    assert client.follow_redirects is False
    assert client._transport._pool._ssl_context.verify_mode.name == "CERT_REQUIRED"  # type: ignore[attr-defined]
    scorer.close()


def test_empty_input_sends_nothing() -> None:
    handler = scripted()
    assert make(handler).score(QUERY, []) == []
    assert handler.seen == []  # type: ignore[attr-defined]


# -- splitting, merging, concurrency ------------------------------------------------------


def test_large_calls_are_split_by_max_batch_size_and_merged_in_order(sleeps: Sleeps) -> None:
    server = FakeRerankServer("tei")
    scorer = make(server, sleeps, dialect="tei")
    documents = docs(100)
    scores = scorer.score(QUERY, documents)
    assert [s.value for s in scores] == expected(documents)
    assert sorted(len(body["texts"]) for body in server.requests) == [4, 32, 32, 32]


def test_sub_batches_run_concurrently_under_the_limit(sleeps: Sleeps) -> None:
    server = FakeRerankServer()
    lock = threading.Lock()
    active = peak = 0

    def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return server.handle(request)

    scorer = make(slow, sleeps, max_batch_size=5, max_concurrency=3)
    documents = docs(40)
    assert [s.value for s in scorer.score(QUERY, documents)] == expected(documents)
    assert peak == 3
    assert len(server.requests) == 8


async def test_async_sub_batches_run_concurrently_under_the_limit(sleeps: Sleeps) -> None:
    server = FakeRerankServer()
    active = peak = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        await server(scope, receive, send)

    scorer = RemoteScorer(
        "http://h/v1",
        async_client=httpx.AsyncClient(transport=httpx.ASGITransport(app)),
        max_batch_size=4,
        max_concurrency=2,
        retry=sleeps.policy(),
    )
    documents = docs(30)
    assert [s.value for s in await scorer.ascore(QUERY, documents)] == expected(documents)
    assert peak == 2


def test_the_limit_holds_across_concurrent_calls_on_one_scorer(sleeps: Sleeps) -> None:
    server = FakeRerankServer()
    lock = threading.Lock()
    active = peak = 0

    def slow(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.01)
        with lock:
            active -= 1
        return server.handle(request)

    scorer = make(slow, sleeps, max_batch_size=2, max_concurrency=2)
    threads = [threading.Thread(target=scorer.score, args=(QUERY, docs(8))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 2


@pytest.mark.parametrize("dialect", ["tei", "cohere", "nim"])
def test_a_too_many_documents_answer_splits_the_batch(dialect: str, sleeps: Sleeps) -> None:
    # The server allows 5 per request; the scorer was told 32.
    server = FakeRerankServer(dialect, max_batch_size=5)
    scorer = make(server, sleeps, dialect=dialect, max_batch_size=32)
    documents = docs(23)
    values = [s.value for s in scorer.score(QUERY, documents)]
    if dialect == "nim":
        values = [1 / (1 + pow(2.718281828459045, -v)) for v in values]
    assert values == pytest.approx(expected(documents), abs=1e-12)
    sizes = [
        len(r.get("texts") or r.get("documents") or r.get("passages")) for r in server.requests
    ]
    assert sizes[0] == 23 and sum(s for s in sizes if s <= 5) == 23
    assert sleeps.waits == []  # a split is not a retry


def test_a_413_without_a_stated_limit_halves_the_batch(sleeps: Sleeps) -> None:
    server = FakeRerankServer()
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["documents"])
        sizes.append(n)
        if n > 6:
            return httpx.Response(413, text="<html>Request Entity Too Large</html>")
        return server.handle(request)

    documents = docs(20)
    assert [s.value for s in make(handler, sleeps).score(QUERY, documents)] == expected(documents)
    assert sizes[:3] == [20, 10, 5] and sum(s for s in sizes if s <= 6) == 20


def test_a_single_document_that_is_still_too_large_fails_with_its_index(sleeps: Sleeps) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(413, text="Request Entity Too Large")

    with pytest.raises(EndpointStatusError) as info:
        make(handler, sleeps).score(QUERY, docs(3))
    assert info.value.status_code == 413 and info.value.indices == (0,)
    assert info.value.__context__ is None  # the internal split signal does not leak


def test_a_failing_sub_batch_names_only_its_documents(sleeps: Sleeps) -> None:
    server = FakeRerankServer()

    def handler(request: httpx.Request) -> httpx.Response:
        if "poison" in json.loads(request.content)["documents"]:
            return httpx.Response(400, json={"detail": "cannot score this"})
        return server.handle(request)

    documents = docs(12)
    documents[6] = "poison"
    with pytest.raises(EndpointStatusError) as info:
        make(handler, sleeps, max_batch_size=4, max_concurrency=1).score(QUERY, documents)
    assert info.value.indices == (4, 5, 6, 7)


def test_several_failing_sub_batches_are_reported_together(sleeps: Sleeps) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        time.sleep(0.01)
        return httpx.Response(400, json={"detail": "bad"})

    with pytest.raises(EndpointStatusError, match="requests failed") as info:
        make(handler, sleeps, max_batch_size=2, max_concurrency=3).score(QUERY, docs(6))
    assert set(info.value.indices) <= set(range(6)) and len(info.value.indices) >= 4


# -- overflow ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["tei", "vllm-score", "nim"])
def test_overflow_error_names_exactly_the_over_length_documents(
    dialect: str, sleeps: Sleeps
) -> None:
    server = FakeRerankServer(dialect, max_words=12)
    scorer = make(server, sleeps, dialect=dialect, overflow="error")
    documents = docs(9)
    documents[2] = " ".join(["w9"] * 20)
    documents[7] = " ".join(["w8"] * 11)
    with pytest.raises(EndpointInputTooLongError) as info:
        scorer.score(QUERY, documents)
    assert isinstance(info.value, InputTooLongError)  # one except for local and remote
    assert info.value.indices in ((2,), (7,))
    with pytest.raises(EndpointInputTooLongError) as async_info:
        asyncio.run(scorer.ascore(QUERY, documents))
    assert set(async_info.value.indices) <= {2, 7}
    assert sleeps.waits == []


def test_a_length_refusal_under_the_cohere_dialect_points_to_vllms_switch(
    sleeps: Sleeps,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        message = "This model's maximum context length is 512 tokens. However, you requested 900"
        return httpx.Response(400, json={"object": "error", "message": message})

    with pytest.raises(EndpointInputTooLongError, match="truncate_prompt_tokens") as info:
        make(handler, sleeps).score(QUERY, ["w1 " * 900])
    assert info.value.indices == (0,) and info.value.status_code == 400


@pytest.mark.parametrize("dialect", ["tei", "vllm-score", "nim", "voyage", "cohere"])
def test_overflow_truncate_lets_the_server_cut(dialect: str, sleeps: Sleeps) -> None:
    server = FakeRerankServer(dialect, max_words=12)
    documents = [*docs(4), " ".join(["w9"] * 20)]
    scores = make(server, sleeps, dialect=dialect).score(QUERY, documents)
    assert len(scores) == 5


# -- nothing lost ------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["cohere", "tei", "voyage", "mixedbread", "vllm-score"])
def test_nothing_is_lost_under_random_429_and_503(dialect: str, sleeps: Sleeps) -> None:
    server = FakeRerankServer(dialect, fail_rate=0.3, seed=7, max_batch_size=16)
    scorer = make(
        server,
        sleeps,
        dialect=dialect,
        max_batch_size=10,
        max_concurrency=4,
        retry=sleeps.policy(max_retries=30),
    )
    documents = docs(150)
    assert [s.value for s in scorer.score(QUERY, documents)] == expected(documents)
    assert server.failures_injected > 5


async def test_async_loses_nothing_under_random_429_and_503(sleeps: Sleeps) -> None:
    server = FakeRerankServer("tei", fail_rate=0.3, seed=3)
    scorer = make(
        server, sleeps, dialect="tei", max_batch_size=5, retry=sleeps.policy(max_retries=30)
    )
    documents = docs(150)
    assert [s.value for s in await scorer.ascore(QUERY, documents)] == expected(documents)
    assert server.failures_injected > 5


# -- async parity -------------------------------------------------------------------------


async def test_async_retries_like_sync(sleeps: Sleeps) -> None:
    handler = scripted(httpx.Response(429, headers={"Retry-After": "1"}), httpx.ReadTimeout("slow"))
    scores = await make(handler, sleeps).ascore(QUERY, docs(3))
    assert [s.value for s in scores] == expected(docs(3))
    assert sleeps.waits == [1.0, 0.5]


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (lambda: httpx.Response(401, json={"detail": "Unauthorized"}), EndpointStatusError),
        (lambda: httpx.Response(200, text="not json"), MalformedResponseError),
        (lambda: httpx.ReadTimeout("slow"), EndpointTimeoutError),
        (lambda: httpx.ConnectError("refused"), EndpointConnectionError),
    ],
)
async def test_async_raises_the_same_errors(
    step: Callable[[], httpx.Response | Exception], error: type[EndpointError], sleeps: Sleeps
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        item = step()
        if isinstance(item, Exception):
            raise item
        return item

    scorer = make(handler, sleeps, retry=sleeps.policy(max_retries=1))
    with pytest.raises(error) as sync_info:
        scorer.score(QUERY, docs(2))
    with pytest.raises(error) as async_info:
        await scorer.ascore(QUERY, docs(2))
    assert async_info.value.indices == sync_info.value.indices == (0, 1)
    assert str(async_info.value) == str(sync_info.value)


async def test_async_fails_fast_and_cancels_the_other_batches(sleeps: Sleeps) -> None:
    started: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = json.loads((await receive())["body"])
        started.append(len(body["documents"]))
        status = 400 if body["documents"][0] == "bad" else 200
        if status == 200:
            await asyncio.sleep(5)  # would stall the test if not cancelled
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b'{"detail": "bad"}'})

    scorer = RemoteScorer(
        "http://h/v1",
        async_client=httpx.AsyncClient(transport=httpx.ASGITransport(app)),
        max_batch_size=2,
        max_concurrency=4,
        retry=sleeps.policy(),
    )
    documents = ["bad", "w1", *docs(6)]
    began = time.perf_counter()
    with pytest.raises(EndpointStatusError) as info:
        await scorer.ascore(QUERY, documents)
    assert time.perf_counter() - began < 2
    assert info.value.indices == (0, 1)


async def test_one_scorer_serves_several_event_loops() -> None:
    scorer = RemoteScorer("http://127.0.0.1:9/v1")

    async def client_id() -> int:
        return id(scorer._async_http_client())

    first = await client_id()
    other = await asyncio.get_running_loop().run_in_executor(None, lambda: asyncio.run(client_id()))
    assert first != other
    await scorer.aclose()


# -- construction -----------------------------------------------------------------------


def test_load_scorer_builds_a_remote_scorer_from_a_url() -> None:
    scorer = load_scorer("http://127.0.0.1:8080", dialect="tei", max_batch_size=16)
    assert isinstance(scorer, RemoteScorer)
    assert scorer.url == "http://127.0.0.1:8080/rerank" and scorer.max_batch_size == 16


@pytest.mark.parametrize(
    "options",
    [
        {"max_batch_size": 0},
        {"max_concurrency": -1},
        {"max_batch_size": 2.5},
        {"overflow": "chunk"},
        {"dialect": "openai"},
    ],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        RemoteScorer("http://127.0.0.1:1", **options)


def test_retry_after_parsing_edge_cases() -> None:
    assert parse_retry_after(None) is None
    assert parse_retry_after("  5 ") == 5.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("nan") is None


# -- the adapters over a remote endpoint ----------------------------------------------------


def test_langchain_compressor_over_a_remote_endpoint() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    transport = httpx.MockTransport(FakeRerankServer("tei").handle)
    compressor = RerankCompressor(
        model="http://127.0.0.1:8080",
        model_kwargs={"dialect": "tei", "client": httpx.Client(transport=transport)},
        top_n=2,
    )
    documents = [Document(page_content=d, id=str(i)) for i, d in enumerate(docs(5))]
    out = compressor.compress_documents(documents, QUERY)
    truth = expected(docs(5))
    best = sorted(range(5), key=lambda i: -truth[i])[:2]
    assert [d.id for d in out] == [str(i) for i in best]
    assert out[0].metadata["relevance_score"] == truth[best[0]]


async def test_llama_index_postprocessor_over_a_remote_endpoint() -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    transport = httpx.MockTransport(FakeRerankServer().handle)
    post = RerankPostprocessor(
        model="http://127.0.0.1:8000/v1",
        model_kwargs={"async_client": httpx.AsyncClient(transport=transport)},
        top_n=3,
    )
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(docs(6))]
    out = await post.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    truth = expected(docs(6))
    assert [n.node.node_id for n in out] == [
        str(i) for i in sorted(range(6), key=lambda i: -truth[i])[:3]
    ]


def test_the_package_exports_remote_scorer_lazily() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rerank_plugins\n"
        "assert 'httpx' not in sys.modules and 'rerank_plugins.remote' not in sys.modules\n"
        "from rerank_plugins import RemoteScorer\n"
        "from rerank_plugins.remote import RemoteScorer as Same\n"
        "assert RemoteScorer is Same\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
