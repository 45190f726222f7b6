"""Hostile and broken requests: every failure is one JSON error body, nothing hangs.

Issue 20, server side: non-finite scores (item 4), huge document lists (8), metric
labels (9), slow connections (10), the request token cap (11), error bodies (16),
unknown fields and content types (17), ``/docs`` (18).
"""

from __future__ import annotations

import json
import random
import string
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from rerank_plugins.serve import create_app
from rerank_plugins.testing.function_scorer import FunctionScorer
from rerank_plugins.wire import IGNORED_FIELDS_HEADER
from tests.serve.conftest import serving

ERROR_KEYS = {"error", "error_type", "message", "indices"}


def _value(query: str, document: str) -> float:
    if "nan" in document:
        return float("nan")
    if "inf" in document:
        return float("inf")
    return float(len(document))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(FunctionScorer(_value), warmup=False, max_client_batch_size=10)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _is_error_body(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) == ERROR_KEYS, body
    return dict(body)


BODIES = {
    "/v1/rerank": lambda docs: {"query": "q", "documents": docs},
    "/rerank": lambda docs: {"query": "q", "texts": docs},
    "/score": lambda docs: {"text_1": "q", "text_2": docs},
}


@pytest.mark.parametrize("path", sorted(BODIES))
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_scores_are_a_500_json_naming_the_documents(
    client: TestClient, path: str, bad: str
) -> None:
    answer = client.post(path, json=BODIES[path](["fine", f"{bad}-doc", "ok"]))
    assert answer.status_code == 500
    body = _is_error_body(answer)
    assert body["indices"] == [1] and body["error_type"] == "Backend"
    assert "InvalidScoreError" in body["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"query": "q", "documents": ["a"], "top_n": NaN}',
        b'{"query": "q", "documents": ["a"], "top_n": Infinity}',
        b'{"text_1": "q", "text_2": ["a"], "x": -Infinity}',
    ],
)
def test_nan_and_infinity_in_a_body_are_422(client: TestClient, raw: bytes) -> None:
    path = "/score" if b"text_1" in raw else "/v1/rerank"
    answer = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert "NaN" in _is_error_body(answer)["message"]


def test_a_lone_surrogate_in_an_echoed_document_field_is_422(client: TestClient) -> None:
    raw = b'{"query": "q", "documents": [{"text": "ok", "title": "x\\ud800"}], '
    raw += b'"return_documents": true}'
    answer = client.post("/v1/rerank", content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert "surrogate" in _is_error_body(answer)["message"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/rerank", {"query": "q"}, 422),
        ("POST", "/v2/rerank", {"query": "q", "documents": "not a list"}, 422),
        ("POST", "/rerank", {"query": 3, "texts": ["a"]}, 422),
        ("POST", "/score", {"text_1": "q"}, 422),
        ("POST", "/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422),
        ("GET", "/nowhere", None, 404),
        ("GET", "/v1/rerank", None, 405),
        ("DELETE", "/health", None, 405),
    ],
)
def test_every_error_is_one_json_body_shape(
    client: TestClient, method: str, path: str, body: object, status: int
) -> None:
    answer = client.request(method, path, json=body)
    assert answer.status_code == status
    _is_error_body(answer)


def test_validation_errors_name_the_field_without_echoing_input(client: TestClient) -> None:
    answer = client.post("/v1/rerank", json={"query": "secret-words", "documents": "private"})
    body = _is_error_body(answer)
    assert "documents" in body["message"]
    assert "private" not in answer.text


def test_a_body_without_a_json_content_type_gets_a_hint(client: TestClient) -> None:
    answer = client.post(
        "/v1/rerank",
        content=b'{"query": "q", "documents": ["private-text"]}',
        headers={"content-type": "text/plain"},
    )
    assert answer.status_code == 422
    body = _is_error_body(answer)
    assert "Content-Type: application/json" in body["message"]
    assert "private-text" not in answer.text


def test_unknown_fields_are_ignored_and_listed(client: TestClient) -> None:
    answer = client.post(
        "/v2/rerank",
        json={"query": "q", "documents": ["a", "bb"], "rank_fields": ["x"], "priority": 1},
    )
    assert answer.status_code == 200
    assert answer.headers[IGNORED_FIELDS_HEADER] == "priority,rank_fields"
    assert any("priority" in w and "rank_fields" in w for w in answer.json()["meta"]["warnings"])
    for path in ("/rerank", "/score"):
        other = client.post(path, json={**BODIES[path](["a"]), "surprise": True})
        assert other.status_code == 200 and other.headers[IGNORED_FIELDS_HEADER] == "surprise"
    plain = client.post("/v2/rerank", json={"query": "q", "documents": ["a"]})
    assert IGNORED_FIELDS_HEADER not in plain.headers
    assert plain.json()["meta"]["warnings"] == []


def test_made_up_methods_and_paths_add_no_metric_labels(client: TestClient) -> None:
    client.get("/nowhere")
    client.request("PATCH", "/nowhere")
    before = _label_values(client)
    rng = random.Random(0)
    for _ in range(1000):
        path = "/" + "".join(rng.choices(string.ascii_letters, k=12))
        method = "".join(rng.choices(string.ascii_uppercase, k=6))
        client.request(method if rng.random() < 0.5 else "GET", path)
    after = _label_values(client)
    assert after == before
    assert "other" in after["path"] and "other" in after["method"]


def _label_values(client: TestClient) -> dict[str, set[str]]:
    client.request("QWERTY", "/nowhere")
    text = client.get("/metrics").text
    values: dict[str, set[str]] = {"method": set(), "path": set()}
    for line in text.splitlines():
        if line.startswith("rerank_http_requests_total{"):
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            for name in values:
                values[name].add(labels[name].strip('"'))
    return values


def test_too_many_documents_are_refused_before_the_body_is_validated(
    client: TestClient,
) -> None:
    answer = client.post("/v1/rerank", json={"query": "q", "documents": [""] * 11})
    assert answer.status_code == 413
    assert "maximum allowed batch size 10" in _is_error_body(answer)["message"]


def test_docs_are_off_by_default_and_on_with_a_flag() -> None:
    scorer = FunctionScorer(_value)
    with TestClient(create_app(scorer, warmup=False)) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/openapi.json").status_code == 200
    with TestClient(create_app(scorer, warmup=False, docs=True)) as c:
        assert c.get("/docs").status_code == 200


@pytest.mark.slow
def test_health_answers_while_a_hostile_body_is_parsed() -> None:
    # 11M empty documents in a 32 MiB body: refused by count without freezing the loop.
    app = create_app(FunctionScorer(_value), warmup=False)
    n = (32 * 2**20 - 40) // 3
    hostile = b'{"query":"q","documents":[' + b'"",' * (n - 1) + b'""]}'
    with serving(app) as url:
        answers: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: answers.append(
                httpx.post(
                    f"{url}/v1/rerank",
                    content=hostile,
                    headers={"content-type": "application/json"},
                    timeout=120,
                )
            )
        )
        sender.start()
        worst = 0.0
        while sender.is_alive():
            start = time.perf_counter()
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.05)
        sender.join()
    assert answers[0].status_code == 413
    assert "1000" in _is_error_body(answers[0])["message"]
    assert worst < 1.0, f"/health took {worst:.2f} s during the hostile request"


def test_json_error_body_for_every_dialect_is_the_error_body_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "ErrorBody" in json.dumps(schema["components"]["schemas"])


class _Slow(FunctionScorer):
    def __init__(self, delay: float) -> None:
        super().__init__(lambda q, d: 1.0)
        self.delay = delay

    def score(self, query, documents):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        return super().score(query, documents)


@pytest.mark.slow
def test_requests_cut_by_the_graceful_timeout_get_a_503_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import uvicorn

    from rerank_plugins.testing import free_port

    app = create_app(_Slow(3.0), warmup=False)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=0.5,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    answers: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"http://127.0.0.1:{config.port}/v1/rerank",
                json={"query": "q", "documents": ["private-document"]},
                timeout=30,
            )
        )
    )
    with caplog.at_level("INFO"):
        caller.start()
        time.sleep(0.5)
        server.should_exit = True
        caller.join()
        thread.join(timeout=30)
    assert answers[0].status_code == 503
    assert "graceful" in _is_error_body(answers[0])["message"]
    assert "Traceback" not in caplog.text and "private-document" not in caplog.text
    ours = [r for r in caplog.records if r.name.startswith("rerank_plugins")]
    assert sum("graceful" in r.getMessage() for r in ours) == 1


def test_unhandled_errors_are_json_and_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(query: str, document: str) -> float:
        raise KeyError(document)

    with TestClient(
        create_app(FunctionScorer(broken), warmup=False), raise_server_exceptions=False
    ) as c:
        with caplog.at_level("INFO"):
            answer = c.post("/v1/rerank", json={"query": "q", "documents": ["private-doc"]})
    assert answer.status_code == 500
    body = _is_error_body(answer)
    assert "private-doc" not in answer.text and "private-doc" not in caplog.text
    assert "KeyError" in body["message"]
    assert not any(r.exc_info for r in caplog.records)
