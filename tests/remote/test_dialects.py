"""Each rerank API's request body and response parsing, through ``httpx.MockTransport``."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from rerank_plugins.errors import InvalidInputError, MalformedResponseError
from rerank_plugins.remote import DIALECTS, RemoteScorer
from rerank_plugins.remote.dialects import endpoint_url, get_dialect

QUERY = "w1 w2"
DOCS = ["w1 w3", "w4", "w2 w1 w5", "w6 w7"]
TRUTH = [0.9, 0.1, 0.7, 0.3]

Handler = Callable[[httpx.Request], httpx.Response]


def results_for(dialect: str, scores: list[float], order: list[int]) -> Any:
    """A real-looking answer of ``dialect``, results in ``order`` (with echoed text that
    does not match the index, as a careless server might send)."""
    wrong = {i: DOCS[(i + 1) % len(DOCS)] for i in range(len(DOCS))}
    if dialect == "cohere":
        return {
            "id": "x",
            "results": [
                {"index": i, "relevance_score": scores[i], "document": {"text": wrong[i]}}
                for i in order
            ],
        }
    if dialect == "tei":
        return [{"index": i, "score": scores[i], "text": wrong[i]} for i in order]
    if dialect == "voyage":
        return {
            "object": "list",
            "data": [{"index": i, "relevance_score": scores[i]} for i in order],
        }
    if dialect == "mixedbread":
        return {"data": [{"index": i, "score": scores[i], "input": wrong[i]} for i in order]}
    if dialect == "nim":
        return {"rankings": [{"index": i, "logit": scores[i]} for i in order]}
    if dialect == "sglang":
        return [{"index": i, "score": scores[i], "document": wrong[i]} for i in order]
    return {
        "object": "list",
        "data": [{"index": i, "object": "score", "score": scores[i]} for i in order],
    }


def scorer_for(dialect: str, handler: Handler, **options: Any) -> RemoteScorer:
    transport = httpx.MockTransport(handler)
    return RemoteScorer(
        "http://rerank.test/v1",
        dialect=dialect,  # type: ignore[arg-type]
        api_key_env=None,
        client=httpx.Client(transport=transport),
        async_client=httpx.AsyncClient(transport=transport),
        **options,
    )


def answering(payload: Any, seen: list[httpx.Request] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, json=payload)

    return handler


ALL = sorted(DIALECTS)

EXPECTED_BODIES = {
    "cohere": {"query": QUERY, "documents": DOCS, "model": "m"},
    "tei": {
        "query": QUERY,
        "texts": DOCS,
        "truncate": True,
        "raw_scores": False,
        "return_text": False,
    },
    "voyage": {"query": QUERY, "documents": DOCS, "model": "m", "truncation": True},
    "mixedbread": {
        "query": QUERY,
        "input": DOCS,
        "model": "m",
        "top_k": 4,
        "return_input": False,
    },
    "nim": {
        "query": {"text": QUERY},
        "passages": [{"text": d} for d in DOCS],
        "model": "m",
        "truncate": "END",
    },
    "vllm-score": {"text_1": QUERY, "text_2": DOCS, "model": "m", "truncate_prompt_tokens": -1},
    "sglang": {"query": QUERY, "documents": DOCS, "model": "m", "return_documents": False},
}

EXPECTED_PATHS = {
    "cohere": "/v1/rerank",
    "tei": "/v1/rerank",
    "voyage": "/v1/rerank",
    "mixedbread": "/v1/reranking",
    "nim": "/v1/ranking",
    "vllm-score": "/v1/score",
    "sglang": "/v1/rerank",
}


@pytest.mark.parametrize("dialect", ALL)
def test_request_body_and_path_follow_the_api(dialect: str) -> None:
    seen: list[httpx.Request] = []
    scorer = scorer_for(
        dialect, answering(results_for(dialect, TRUTH, [0, 1, 2, 3]), seen), model="m"
    )
    scorer.score(QUERY, DOCS)
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == EXPECTED_PATHS[dialect]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == EXPECTED_BODIES[dialect]


@pytest.mark.parametrize("dialect", ALL)
def test_top_n_is_never_sent(dialect: str) -> None:
    seen: list[httpx.Request] = []
    scorer = scorer_for(dialect, answering(results_for(dialect, TRUTH, [0, 1, 2, 3]), seen))
    scorer.score(QUERY, DOCS)
    body = json.loads(seen[0].content)
    assert "top_n" not in body
    # Mixedbread's top_k asks for every document of the batch, never fewer.
    assert body.get("top_k", len(DOCS)) == len(DOCS)


@pytest.mark.parametrize("dialect", ALL)
def test_results_are_mapped_by_index_not_by_order_or_echoed_text(dialect: str) -> None:
    shuffled = [2, 0, 3, 1]
    scorer = scorer_for(dialect, answering(results_for(dialect, TRUTH, shuffled)))
    scores = scorer.score(QUERY, DOCS)
    assert [s.value for s in scores] == TRUTH
    assert all(s.kind == DIALECTS[dialect].score_kinds[0] for s in scores)
    assert all(s.tokens is None and not s.truncated for s in scores)


@pytest.mark.parametrize(
    ("dialect", "kind"),
    [
        ("cohere", "probability"),
        ("tei", "probability"),
        ("voyage", "probability"),
        ("mixedbread", "probability"),
        ("nim", "logit"),
        ("vllm-score", "probability"),
        ("sglang", "probability"),
    ],
)
def test_each_dialect_declares_its_score_kind(dialect: str, kind: str) -> None:
    scorer = scorer_for(dialect, answering(results_for(dialect, TRUTH, [0, 1, 2, 3])))
    assert scorer.score_kind == kind
    assert {s.kind for s in scorer.score(QUERY, DOCS)} == {kind}


def test_tei_raw_scores_declare_logits() -> None:
    seen: list[httpx.Request] = []
    raw = [3.5, -2.0, 1.0, -0.5]
    scorer = scorer_for(
        "tei", answering(results_for("tei", raw, [0, 1, 2, 3]), seen), score_kind="logit"
    )
    scores = scorer.score(QUERY, DOCS)
    assert json.loads(seen[0].content)["raw_scores"] is True
    assert [s.value for s in scores] == raw and {s.kind for s in scores} == {"logit"}


def test_vllm_score_logits_switch_the_activation_off() -> None:
    seen: list[httpx.Request] = []
    scorer = scorer_for(
        "vllm-score",
        answering(results_for("vllm-score", [2.0, -1.0, 0.5, 0.0], [0, 1, 2, 3]), seen),
        score_kind="logit",
    )
    scorer.score(QUERY, DOCS)
    assert json.loads(seen[0].content)["use_activation"] is False


@pytest.mark.parametrize(
    ("dialect", "field", "refuse"),
    [("tei", "truncate", False), ("voyage", "truncation", False), ("nim", "truncate", "NONE")],
)
def test_overflow_error_asks_the_server_to_refuse(dialect: str, field: str, refuse: object) -> None:
    seen: list[httpx.Request] = []
    scorer = scorer_for(
        dialect, answering(results_for(dialect, TRUTH, [0, 1, 2, 3]), seen), overflow="error"
    )
    scorer.score(QUERY, DOCS)
    assert json.loads(seen[0].content)[field] == refuse


def test_vllm_score_overflow_error_leaves_truncation_off() -> None:
    seen: list[httpx.Request] = []
    scorer = scorer_for(
        "vllm-score",
        answering(results_for("vllm-score", TRUTH, [0, 1, 2, 3]), seen),
        overflow="error",
    )
    scorer.score(QUERY, DOCS)
    assert "truncate_prompt_tokens" not in json.loads(seen[0].content)


@pytest.mark.parametrize("dialect", ["cohere", "mixedbread"])
def test_overflow_error_is_refused_where_the_api_cannot_express_it(dialect: str) -> None:
    with pytest.raises(InvalidInputError, match="overflow='error'"):
        scorer_for(dialect, answering({}), overflow="error")


def test_a_score_kind_the_api_cannot_return_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="nim"):
        scorer_for("nim", answering({}), score_kind="probability")
    with pytest.raises(InvalidInputError, match="maxsim"):
        scorer_for("cohere", answering({}), score_kind="maxsim")  # type: ignore[arg-type]


def _items(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, list):
        return payload
    return next(v for v in payload.values() if isinstance(v, list))


@pytest.mark.parametrize("dialect", ALL)
def test_a_missing_index_is_an_error_naming_the_document(dialect: str) -> None:
    payload = results_for(dialect, TRUTH, [3, 0, 1])
    with pytest.raises(MalformedResponseError) as info:
        scorer_for(dialect, answering(payload)).score(QUERY, DOCS)
    assert info.value.indices == (2,)


@pytest.mark.parametrize("dialect", ALL)
def test_a_duplicated_index_is_an_error_naming_the_document(dialect: str) -> None:
    payload = results_for(dialect, TRUTH, [0, 1, 2, 3, 1])
    with pytest.raises(MalformedResponseError, match="more than once") as info:
        scorer_for(dialect, answering(payload)).score(QUERY, DOCS)
    assert info.value.indices == (1,)


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("bad_index", [4, -1, "2", 1.0, None, True])
def test_an_index_that_cannot_be_placed_fails_the_whole_batch(
    dialect: str, bad_index: object
) -> None:
    payload = results_for(dialect, TRUTH, [0, 1, 2, 3])
    _items(payload)[2]["index"] = bad_index
    with pytest.raises(MalformedResponseError, match="cannot be placed") as info:
        scorer_for(dialect, answering(payload)).score(QUERY, DOCS)
    assert info.value.indices == (0, 1, 2, 3)


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize("bad_score", ["0.5", None, False, math.nan, math.inf])
def test_a_score_that_is_not_a_finite_number_is_an_error(dialect: str, bad_score: object) -> None:
    payload = results_for(dialect, TRUTH, [0, 1, 2, 3])
    key = next(k for k in ("relevance_score", "score", "logit") if k in _items(payload)[1])
    _items(payload)[1][key] = bad_score

    def handler(request: httpx.Request) -> httpx.Response:
        # json.dumps writes NaN/Infinity, which Python's parser (like many servers') reads.
        return httpx.Response(200, content=json.dumps(payload).encode())

    with pytest.raises(MalformedResponseError) as info:
        scorer_for(dialect, handler).score(QUERY, DOCS)
    assert info.value.indices == (1,)


@pytest.mark.parametrize("dialect", ALL)
@pytest.mark.parametrize(
    "body", [b"<html>502 Bad Gateway</html>", b"", b'{"results": ', b"\xff\xfe", b"null", b"[]{}"]
)
def test_a_body_that_is_not_the_dialects_json_is_malformed(dialect: str, body: bytes) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=body)

    with pytest.raises(MalformedResponseError) as info:
        scorer_for(dialect, handler).score(QUERY, DOCS)
    assert info.value.indices == (0, 1, 2, 3)
    assert len(calls) == 1  # a malformed answer is not retried


@pytest.mark.parametrize("dialect", ALL)
def test_the_wrong_top_level_shape_is_malformed(dialect: str) -> None:
    other = "nim" if dialect != "nim" else "cohere"
    payload = results_for(other, TRUTH, [0, 1, 2, 3])
    with pytest.raises(MalformedResponseError):
        scorer_for(dialect, answering(payload)).score(QUERY, DOCS)


@pytest.mark.parametrize(
    "dialect", ["cohere", "tei", "voyage", "mixedbread", "vllm-score", "sglang"]
)
def test_probabilities_outside_0_1_mean_the_server_returns_raw_scores(dialect: str) -> None:
    payload = results_for(dialect, [0.2, 3.7, 0.5, 0.1], [0, 1, 2, 3])
    with pytest.raises(MalformedResponseError, match="score_kind='logit'") as info:
        scorer_for(dialect, answering(payload)).score(QUERY, DOCS)
    assert info.value.indices == (1,)


def test_llama_cpp_style_raw_scores_are_accepted_when_declared() -> None:
    payload = results_for("cohere", [-3.2, 5.1, 0.0, 1.5], [1, 3, 2, 0])
    scores = scorer_for("cohere", answering(payload), score_kind="logit").score(QUERY, DOCS)
    assert [s.value for s in scores] == [-3.2, 5.1, 0.0, 1.5]
    assert {s.kind for s in scores} == {"logit"}


@pytest.mark.parametrize("dialect", ALL)
async def test_async_parses_like_sync(dialect: str) -> None:
    scorer = scorer_for(dialect, answering(results_for(dialect, TRUTH, [3, 1, 0, 2])))
    assert await scorer.ascore(QUERY, DOCS) == scorer.score(QUERY, DOCS)


@pytest.mark.parametrize(
    ("base", "dialect", "expected"),
    [
        ("http://h:8000", "cohere", "http://h:8000/rerank"),
        ("http://h:8000/", "cohere", "http://h:8000/rerank"),
        ("http://h:8000/v1", "cohere", "http://h:8000/v1/rerank"),
        ("https://api.cohere.com/v2", "cohere", "https://api.cohere.com/v2/rerank"),
        ("https://api.cohere.com/v2/rerank", "cohere", "https://api.cohere.com/v2/rerank"),
        ("http://h:8080", "tei", "http://h:8080/rerank"),
        ("https://api.voyageai.com", "voyage", "https://api.voyageai.com/v1/rerank"),
        ("https://api.voyageai.com/v1", "voyage", "https://api.voyageai.com/v1/rerank"),
        ("https://api.mixedbread.com", "mixedbread", "https://api.mixedbread.com/v1/reranking"),
        ("http://h:8000", "nim", "http://h:8000/v1/ranking"),
        ("http://h:8000/v1/ranking", "nim", "http://h:8000/v1/ranking"),
        ("http://h:8000", "vllm-score", "http://h:8000/score"),
        ("http://h:8000/v1", "vllm-score", "http://h:8000/v1/score"),
        ("http://proxy/team/models/v1", "cohere", "http://proxy/team/models/v1/rerank"),
        ("http://h:30000", "sglang", "http://h:30000/v1/rerank"),
        ("http://h:30000/v1", "sglang", "http://h:30000/v1/rerank"),
    ],
)
def test_endpoint_url(base: str, dialect: str, expected: str) -> None:
    assert str(endpoint_url(base, get_dialect(dialect))) == expected


@pytest.mark.parametrize("bad", ["ftp://h/v1", "h:8000", "/v1/rerank", "http:///v1"])
def test_a_url_that_is_not_http_is_refused(bad: str) -> None:
    with pytest.raises(InvalidInputError):
        endpoint_url(bad, get_dialect("cohere"))


def test_an_unknown_dialect_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match="vllm-score"):
        get_dialect("openai")
