"""Nothing silent across the wire: RemoteScorer against ``rerank-plugins serve`` flags the
documents the server cut (and gives their token counts) exactly like the local scorer."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
import pytest

from rerank_plugins import load_scorer
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.scoring import Score
from rerank_plugins.testing import random_text

from .conftest import WINDOW

QUERY = "w1 w2 w3"
SERVED_DIALECTS = ["cohere", "tei", "vllm-score"]  # every dialect our server answers


@pytest.fixture(scope="module")
def documents() -> list[str]:
    rng = random.Random(11)
    return ["w1 w2", random_text(rng, 3 * WINDOW), "w3", random_text(rng, 5 * WINDOW), "w4 w5"]


def flags(scores: list[Score]) -> list[tuple[bool, int | None]]:
    return [(s.truncated, s.tokens) for s in scores]


@pytest.mark.parametrize("dialect", SERVED_DIALECTS)
def test_remote_scores_carry_the_local_truncation_flags_and_tokens(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str], dialect: str
) -> None:
    local = local_scorer.score(QUERY, documents)
    assert [s.truncated for s in local] == [False, True, False, True, False]
    assert all(s.tokens is not None for s in local)
    with load_scorer(base_url, dialect=dialect) as remote:  # type: ignore[attr-defined]
        got = remote.score(QUERY, documents)
        assert flags(got) == flags(local)
        assert asyncio.run(remote.ascore(QUERY, documents)) == got


def test_flags_land_on_the_right_documents_when_a_call_is_split(
    base_url: str, local_scorer: CrossEncoderScorer, documents: list[str]
) -> None:
    # Two documents per request: the server's indices are per request, the scorer's per call.
    with RemoteScorer(base_url, max_batch_size=2) as remote:
        got = remote.score(QUERY, documents)
    assert flags(got) == flags(local_scorer.score(QUERY, documents))


def _server(headers: dict[str, str]) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        results = [{"index": i, "relevance_score": 0.5} for i in range(3)]
        return httpx.Response(200, json={"results": results}, headers=headers)

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_a_server_without_a_report_flags_nothing() -> None:
    scorer = RemoteScorer("http://rerank.test", client=_server({}))
    assert flags(scorer.score("q", ["a", "b", "c"])) == [(False, None)] * 3


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Truncated-Documents": "1,7"},  # an index outside the request
        {"X-Truncated-Documents": "one"},
        {"X-Document-Tokens": "3,4"},  # not one count per document
    ],
)
def test_a_malformed_report_is_ignored_with_a_warning(
    headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    scorer = RemoteScorer("http://rerank.test", client=_server(headers))
    with caplog.at_level(logging.WARNING, logger="rerank_plugins.remote"):
        got = scorer.score("q", ["a", "b", "c"])
    assert flags(got) == [(False, None)] * 3
    assert "malformed truncation report" in caplog.text
