"""The server against its clients: the official cohere SDK, our RemoteScorer in three
dialects, raw HTTP for the limits; every answer checked against the local scorer."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from rerank_plugins import load_scorer, rank
from rerank_plugins.errors import EndpointInputTooLongError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.serve import create_app
from rerank_plugins.testing import FunctionScorer, random_text

from .conftest import WINDOW, serving

cohere = pytest.importorskip("cohere")

TOLERANCE = 1e-6
QUERY = "w1 w2 w3"


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(7)
    docs = [random_text(rng, n) for n in (3, 40, 1, 12, 25, 7, 50, 2)]
    docs[3] = f"w1 w2 {docs[3]}"
    return docs


def local_values(scorer: CrossEncoderScorer, docs: list[str], query: str = QUERY) -> list[float]:
    return [s.value for s in scorer.score(query, docs)]


def ranked_indices(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: -values[i])
    return order


def test_cohere_sdk_v1_client_gets_the_local_scores_and_order(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    client = cohere.Client(api_key="unused", base_url=base_url, timeout=60)
    answer = client.rerank(query=QUERY, documents=documents, model="tiny", return_documents=True)
    expected = local_values(local_scorer, documents)
    assert [r.index for r in answer.results] == ranked_indices(expected)
    for r in answer.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=TOLERANCE)
        assert r.document is not None and r.document.text == documents[r.index]


def test_cohere_sdk_v2_client_gets_the_local_scores_and_order(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=base_url, timeout=60)
    answer = client.rerank(model="tiny", query=QUERY, documents=documents, top_n=3)
    expected = local_values(local_scorer, documents)
    assert [r.index for r in answer.results] == ranked_indices(expected)[:3]
    for r in answer.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=TOLERANCE)
    assert answer.meta is not None and answer.meta.tokens is not None
    assert answer.meta.tokens.input_tokens == sum(
        s.tokens or 0 for s in local_scorer.score(QUERY, documents)
    )


async def test_cohere_sdk_async_v2_client_concurrent_requests(
    base_url: str, local_scorer: CrossEncoderScorer
) -> None:
    import asyncio

    rng = random.Random(3)
    batches = [[random_text(rng, rng.randint(1, 40)) for _ in range(5)] for _ in range(12)]
    client = cohere.AsyncClientV2(api_key="unused", base_url=base_url, timeout=60)
    answers = await asyncio.gather(
        *(client.rerank(model="tiny", query=QUERY, documents=b) for b in batches)
    )
    for docs, answer in zip(batches, answers, strict=True):
        expected = local_values(local_scorer, docs)
        got = {r.index: r.relevance_score for r in answer.results}
        assert got == pytest.approx(dict(enumerate(expected)), abs=TOLERANCE)


@pytest.mark.parametrize(
    ("dialect", "suffix"), [("cohere", ""), ("cohere", "/v1"), ("tei", ""), ("vllm-score", "")]
)
def test_remote_scorer_against_the_server_equals_the_local_scorer(
    base_url: str,
    local_scorer: CrossEncoderScorer,
    documents: list[str],
    dialect: str,
    suffix: str,
) -> None:
    with RemoteScorer(base_url + suffix, dialect=dialect, max_batch_size=3) as remote:  # type: ignore[arg-type]
        values = [s.value for s in remote.score(QUERY, documents)]
    assert values == pytest.approx(local_values(local_scorer, documents), abs=TOLERANCE)


def test_load_scorer_with_the_server_url_equals_the_local_scorer(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    remote = load_scorer(base_url)
    values = [s.value for s in remote.score(QUERY, documents)]
    assert values == pytest.approx(local_values(local_scorer, documents), abs=TOLERANCE)
    assert [r.index for r in rank(remote.score(QUERY, documents))] == ranked_indices(
        local_values(local_scorer, documents)
    )


def test_raw_scores_are_the_local_logits(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    logits = [
        s.value
        for s in local_scorer.score_pairs(local_scorer.encode_pairs(QUERY, documents), raw=True)
    ]
    tei = httpx.post(
        f"{base_url}/rerank",
        json={"query": QUERY, "texts": documents, "raw_scores": True, "return_text": True},
        timeout=60,
    ).json()
    assert isinstance(tei, list) and [r["index"] for r in tei] == ranked_indices(logits)
    assert {r["index"]: r["score"] for r in tei} == pytest.approx(
        dict(enumerate(logits)), abs=TOLERANCE
    )
    assert all(r["text"] == documents[r["index"]] for r in tei)
    vllm = httpx.post(
        f"{base_url}/score",
        json={"text_1": QUERY, "text_2": documents, "use_activation": False},
        timeout=60,
    ).json()
    assert [d["score"] for d in vllm["data"]] == pytest.approx(logits, abs=TOLERANCE)


def test_vllm_pairwise_scoring_matches_each_query_alone(
    base_url: str, local_scorer: CrossEncoderScorer
) -> None:
    queries, docs = ["w1", "w5 w6", "w1"], ["w1 w2", "w6 w7 w8", "w9"]
    answer = httpx.post(
        f"{base_url}/v1/score", json={"text_1": queries, "text_2": docs}, timeout=60
    )
    expected = [local_scorer.score(q, [d])[0].value for q, d in zip(queries, docs, strict=True)]
    assert [d["score"] for d in answer.json()["data"]] == pytest.approx(expected, abs=TOLERANCE)


def test_truncation_is_reported_never_silent(
    base_url: str, local_scorer: CrossEncoderScorer
) -> None:
    long = random_text(random.Random(2), 3 * WINDOW)
    docs = ["w1 w2", long, "w3"]
    answer = httpx.post(
        f"{base_url}/v2/rerank", json={"query": QUERY, "documents": docs}, timeout=60
    )
    assert answer.status_code == 200
    assert answer.json()["meta"]["truncated_documents"] == [1]
    assert answer.headers["X-Truncated-Documents"] == "1"
    assert "truncated" in answer.json()["meta"]["warnings"][0]
    expected = local_values(local_scorer, docs)  # the local scorer truncates the same way
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert got == pytest.approx(dict(enumerate(expected)), abs=TOLERANCE)
    capped = httpx.post(
        f"{base_url}/v2/rerank",
        json={"query": QUERY, "documents": docs, "max_tokens_per_doc": 1},
        timeout=60,
    ).json()
    assert capped["meta"]["truncated_documents"] == [0, 1]  # "w3" is one token: not cut


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rerank", {"query": QUERY, "texts": ["DOC0", "LONG", "DOC2", "LONG"]}),
        ("/score", {"text_1": QUERY, "text_2": ["DOC0", "LONG", "DOC2", "LONG"]}),
        (
            "/v1/rerank",
            {"query": QUERY, "documents": ["DOC0", "LONG", "DOC2", "LONG"], "truncate": False},
        ),
    ],
)
def test_over_window_documents_without_truncation_are_refused_by_index(
    base_url: str, path: str, body: dict[str, object]
) -> None:
    long = random_text(random.Random(4), 2 * WINDOW)
    key = "texts" if "texts" in body else "text_2" if "text_2" in body else "documents"
    body = {**body, key: [long if d == "LONG" else "w1" for d in body[key]]}  # type: ignore[union-attr]
    answer = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    assert answer.status_code == 413
    assert answer.json()["indices"] == [1, 3]
    assert "[1, 3]" in answer.json()["error"]


def test_remote_scorer_with_overflow_error_names_the_long_documents(base_url: str) -> None:
    long = random_text(random.Random(4), 2 * WINDOW)
    with RemoteScorer(base_url, dialect="tei", overflow="error") as remote:
        with pytest.raises(EndpointInputTooLongError) as info:
            remote.score(QUERY, ["w1", long, "w2"])
    assert info.value.indices == (1,)


@pytest.mark.parametrize(
    "body",
    [
        {"query": "", "documents": ["w1"]},
        {"query": "   ", "texts": ["w1"]},
        {"query": QUERY},
        {"query": QUERY, "documents": [{"title": "no text"}]},
        {"query": QUERY, "documents": ["w1"], "top_n": 0},
    ],
)
def test_invalid_requests_are_422(base_url: str, body: dict[str, object]) -> None:
    answer = httpx.post(f"{base_url}/rerank", json=body, timeout=60)
    assert answer.status_code == 422, answer.text


def test_empty_document_lists_get_empty_answers(base_url: str) -> None:
    assert httpx.post(f"{base_url}/rerank", json={"query": "q", "texts": []}).json() == []
    answer = httpx.post(f"{base_url}/v1/rerank", json={"query": "q", "documents": []}).json()
    assert answer["results"] == []


def test_models_health_metrics_and_openapi(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{base_url}/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == WINDOW
    httpx.post(f"{base_url}/v1/rerank", json={"query": "q", "documents": ["a b", "c"]}, timeout=60)
    text = httpx.get(f"{base_url}/metrics").text
    for name in (
        "rerank_http_requests_total",
        "rerank_documents_total",
        "rerank_tokens_total",
        "rerank_batch_pairs_bucket",
        "rerank_batch_requests_bucket",
        "rerank_queue_tokens",
        "rerank_http_request_seconds_bucket",
    ):
        assert name in text
    # queue wait vs compute: one count per stage for the request above (at least)
    for stage in ("prepare", "queue", "forward"):
        counts = [
            float(ln.rsplit(" ", 1)[1])
            for ln in text.splitlines()
            if ln.startswith(f'rerank_stage_seconds_count{{stage="{stage}"}}')
        ]
        assert counts and counts[0] >= 1, stage
    documents = [ln for ln in text.splitlines() if ln.startswith("rerank_documents_total")]
    assert float(documents[0].split()[-1]) >= 2
    spec = httpx.get(f"{base_url}/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/rerank", "/score", "/health"} <= set(spec["paths"])


# -- servers with their own settings -------------------------------------------------


@pytest.fixture()
def keyed(local_scorer: CrossEncoderScorer) -> Iterator[str]:
    app = create_app(
        local_scorer, api_key="s3cret-key", max_client_batch_size=4, max_body_bytes=2000
    )
    with serving(app) as url:
        yield url


def test_api_key_is_required_everywhere_but_health(keyed: str) -> None:
    body = {"query": "q", "documents": ["a"]}
    assert httpx.post(f"{keyed}/v1/rerank", json=body).status_code == 401
    wrong = httpx.post(f"{keyed}/v1/rerank", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{keyed}/metrics").status_code == 401
    assert httpx.get(f"{keyed}/health").status_code == 200
    good = httpx.post(
        f"{keyed}/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret-key"}
    )
    assert good.status_code == 200
    client = cohere.ClientV2(api_key="s3cret-key", base_url=keyed, timeout=60)
    assert len(client.rerank(model="m", query="q", documents=["a", "b"]).results) == 2


def test_too_many_documents_and_too_large_bodies_are_413(keyed: str) -> None:
    auth = {"Authorization": "Bearer s3cret-key"}
    many = httpx.post(f"{keyed}/rerank", json={"query": "q", "texts": ["a"] * 5}, headers=auth)
    assert many.status_code == 413
    assert "maximum allowed batch size 4" in many.json()["error"]
    big = httpx.post(f"{keyed}/rerank", json={"query": "q", "texts": ["w1 " * 800]}, headers=auth)
    assert big.status_code == 413 and "body" in big.json()["error"]
    # Our client splits on the 413 and still scores everything.
    with RemoteScorer(keyed, dialect="tei", api_key="s3cret-key") as remote:
        assert len(remote.score("q", [f"w{i}" for i in range(10)])) == 10


def test_access_log_is_structured_and_carries_no_bodies_or_keys(
    keyed: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="rerank_plugins.serve.access"):
        httpx.post(
            f"{keyed}/v1/rerank",
            json={"query": "secret-query-words", "documents": ["private-doc", "x"]},
            headers={"Authorization": "Bearer s3cret-key", "X-Request-Id": "abc-123"},
        )
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    entry = next(e for e in lines if e["request_id"] == "abc-123")
    assert entry["method"] == "POST" and entry["path"] == "/v1/rerank"
    assert entry["status"] == 200 and entry["documents"] == 2 and entry["tokens"] > 0
    assert entry["latency_ms"] >= 0
    text = caplog.text
    assert "secret-query-words" not in text and "private-doc" not in text
    assert "s3cret-key" not in text


class SlowScorer(FunctionScorer):
    """A scorer whose every call blocks for ``delay`` seconds, recording the documents."""

    def __init__(self, delay: float) -> None:
        super().__init__(lambda q, d: float(len(d)), kind="logit")
        self.delay = delay
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def score(self, query, documents):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        with self.lock:
            self.seen.extend(documents)
        return super().score(query, documents)


def test_full_queue_answers_429_with_retry_after() -> None:
    scorer = SlowScorer(0.3)
    # Each request of 4 short documents is ~12 estimated tokens: the queue holds 2.
    app = create_app(scorer, max_batch_tokens=16, max_queued_tokens=30, warmup=False)
    with serving(app) as url:
        results: list[httpx.Response] = []

        def call(k: int) -> None:
            docs = [f"d{k}-{i}" for i in range(4)]
            results.append(
                httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": docs}, timeout=60)
            )

        threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in results)
    assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
    refused = [r for r in results if r.status_code == 429]
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    # Every accepted request was scored whole; refused ones not at all.
    for r in results:
        if r.status_code == 200:
            assert len(r.json()["results"]) == 4


def test_a_disconnected_clients_pending_documents_are_dropped() -> None:
    scorer = SlowScorer(0.5)
    app = create_app(scorer, max_batch_tokens=8, max_batch_requests=1, warmup=False)
    with serving(app) as url:
        blocker = threading.Thread(
            target=httpx.post,
            args=(f"{url}/v1/rerank",),
            kwargs={"json": {"query": "q", "documents": ["busy"]}, "timeout": 60},
        )
        blocker.start()
        time.sleep(0.1)  # the worker is now inside the slow forward
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{url}/v1/rerank",
                json={"query": "q", "documents": ["gone-a", "gone-b", "gone-c"]},
                timeout=httpx.Timeout(60, read=0.2),
            )
        blocker.join()
        time.sleep(0.8)  # time for anything still queued to run
        metrics = httpx.get(f"{url}/metrics").text
    assert "busy" in scorer.seen
    assert not any(d.startswith("gone") for d in scorer.seen)
    assert 'rerank_rejected_requests_total{reason="client_disconnected"} 1.0' in metrics


async def test_app_serves_inside_an_existing_event_loop_without_a_lifespan(
    local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    # As a host that mounts the app without running its lifespan (the batcher then
    # starts in the running loop on the first request).
    app = create_app(local_scorer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answer = await client.post("/v1/rerank", json={"query": QUERY, "documents": documents})
        assert (await client.get("/health")).status_code == 200
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert got == pytest.approx(
        dict(enumerate(local_values(local_scorer, documents))), abs=TOLERANCE
    )
    await app.state.batcher.stop()
