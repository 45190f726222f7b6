"""RemoteScorer's guards: secrets in no log record, credentials out of URLs, options checked
at construction, TLS failures not retried, sockets released when a scorer is dropped."""

from __future__ import annotations

import gc
import logging
import math
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from rerank_plugins import RerankError
from rerank_plugins.errors import EndpointConnectionError, InvalidInputError
from rerank_plugins.remote import RemoteScorer, RetryPolicy
from rerank_plugins.testing.fake_server import FakeRerankServer, serve

KEY = "sk-live-SECRETKEY0123456789"
PASSWORD = "PASSWORD-hunter2"
QUERY_KEY = "QUERYSECRET987654"


@pytest.fixture()
def fake_url() -> Iterator[str]:
    """The shipped fake server on loopback, answering 503 to every third request."""
    server = serve(FakeRerankServer("cohere", fail_rate=0.3, seed=3))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING])
def test_no_secret_reaches_any_log_record_at_any_level(
    fake_url: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(level)  # root and every library logger: httpx, httpcore, ours
    host = fake_url.removeprefix("http://")
    # Credentials in the URL and a key in its query string, on a server that 503s.
    url = f"http://alice:{PASSWORD}@{host}/v1?key={QUERY_KEY}"
    scorer = RemoteScorer(
        url, api_key_env=None, retry=RetryPolicy(max_retries=8, backoff=0.0),
        headers={"X-Api-Key": KEY},
    )  # fmt: skip
    scorer.score("q", [f"d{i}" for i in range(40)])
    scorer.close()
    # A call that fails: the error is logged by the caller with its traceback.
    broken = RemoteScorer(
        f"http://bob:{PASSWORD}@127.0.0.1:9/v1?key={QUERY_KEY}", api_key_env=None,
        retry=RetryPolicy(max_retries=1, backoff=0.0),
    )  # fmt: skip
    try:
        broken.score("q", ["d"])
    except RerankError:
        logging.getLogger("app").exception("rerank failed")
    broken.close()
    records = caplog.records
    assert any(r.name == "httpx" for r in records) or level > logging.INFO
    for record in records:
        text = record.getMessage() + (record.exc_text or "")
        for secret in (KEY, PASSWORD, QUERY_KEY):
            assert secret not in text, (record.name, text)
    assert all(s not in caplog.text for s in (KEY, PASSWORD, QUERY_KEY))


def test_url_credentials_travel_as_basic_auth_not_in_the_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return FakeRerankServer().handle(request)

    transport = httpx.MockTransport(handler)
    scorer = RemoteScorer(
        f"http://alice:{PASSWORD}@h/v1", api_key_env=None, client=httpx.Client(transport=transport)
    )
    scorer.score("q", ["d"])
    (request,) = seen
    assert request.url.userinfo == b"" and PASSWORD not in str(request.url)
    expected = httpx.BasicAuth("alice", PASSWORD).auth_flow(httpx.Request("GET", "http://h"))
    assert request.headers["authorization"] == next(expected).headers["authorization"]


@pytest.mark.parametrize(
    "key", ["sk-\x00abc", "sk-abc\ndef", "sk-abc\r\nX-Evil: 1", "sk-\x7fabc", "sk-ключ", "a b"]
)
def test_an_api_key_with_control_characters_is_refused_at_construction(key: str) -> None:
    with pytest.raises(InvalidInputError, match="printable ASCII") as info:
        RemoteScorer("http://127.0.0.1:9/v1", api_key=key)
    assert key not in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": math.nan},
        {"timeout": httpx.Timeout(5.0, read=-1.0)},
        {"deadline": 0},
        {"deadline": math.inf},
        {"deadline": "10"},
        {"max_response_bytes": 0},
        {"extra_body": {"x": math.nan}},
        {"extra_body": {"x": math.inf}},
        {"extra_body": {"x": object()}},
        {"headers": {"X-Evil": "a\r\nInjected: 1"}},
    ],
)
def test_bad_options_are_refused_at_construction(options: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        RemoteScorer("http://127.0.0.1:9/v1", api_key_env=None, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "documents", "indices"),
    [("\ud800", ["ok"], ()), ("q", ["ok", "bad \udfff", "ok", "\ud83d"], (1, 3))],
)
def test_lone_surrogates_are_an_invalid_input_error_naming_the_documents(
    query: str, documents: list[str], indices: tuple[int, ...]
) -> None:
    scorer = RemoteScorer(
        "http://h/v1",
        api_key_env=None,
        client=httpx.Client(transport=httpx.MockTransport(FakeRerankServer().handle)),
    )
    with pytest.raises(InvalidInputError) as info:
        scorer.score(query, documents)
    assert info.value.indices == indices


@pytest.fixture()
def tls_refuser() -> Iterator[tuple[str, list[int]]]:
    """A plain-text server on loopback: an https client fails in the TLS handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_tls_failures_are_not_retried(tls_refuser: tuple[str, list[int]]) -> None:
    url, accepted = tls_refuser
    scorer = RemoteScorer(url, api_key_env=None, retry=RetryPolicy(max_retries=4, backoff=0.0))
    with pytest.raises(EndpointConnectionError, match="SSL"):
        scorer.score("q", ["d"])
    scorer.close()
    assert len(accepted) == 1


def test_a_dropped_scorer_closes_its_client(fake_url: str) -> None:
    scorer = RemoteScorer(f"{fake_url}/v1", api_key_env=None, retry=RetryPolicy(backoff=0.0))
    scorer.score("q", ["d"])
    client = scorer._sync_client()
    assert not client.is_closed
    del scorer
    gc.collect()
    assert client.is_closed
