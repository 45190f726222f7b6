"""The server past the window: a chunking scorer chunks (also with truncate off),
``max_tokens_per_doc`` in every dialect, cascades answered per request and ranked by stage."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_plugins import Cascade, rank
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.matryoshka import MatryoshkaScorer
from rerank_plugins.serve import create_app
from rerank_plugins.testing import FunctionScorer, make_matryoshka_checkpoint, random_text

QUERY = "w1 w2 w3 w4"


async def _post(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            return await client.post(path, json=body)
    finally:
        await app.state.batcher.stop()


@pytest.fixture(scope="module")
def chunking(modernbert_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(
        modernbert_dir, device="cpu", max_length=40, overflow="chunk", cache=False
    )


@pytest.mark.parametrize("truncate", [True, False])
async def test_a_chunking_server_scores_long_documents_in_windows(
    chunking: CrossEncoderScorer, truncate: bool
) -> None:
    docs = [random_text(random.Random(1), n) for n in (100, 5, 60)]
    app = create_app(chunking, warmup=False)
    answer = await _post(
        app, "/v2/rerank", {"query": QUERY, "documents": docs, "truncate": truncate}
    )
    assert answer.status_code == 200
    expected = chunking.score(QUERY, docs)
    assert [s.chunks for s in expected] == [4, None, 2]  # 100 tokens: 33 + 33 + 33 + 1
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert got == pytest.approx({i: s.value for i, s in enumerate(expected)}, abs=1e-5)
    assert answer.json()["meta"]["truncated_documents"] == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/rerank", {"query": QUERY, "documents": None}),
        ("/rerank", {"query": QUERY, "texts": None, "truncate": True}),
        ("/score", {"text_1": QUERY, "text_2": None, "truncate_prompt_tokens": -1}),
    ],
)
async def test_max_tokens_per_doc_in_every_dialect(
    modernbert_dir: Path, path: str, body: dict[str, Any]
) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", cache=False)
    docs = [random_text(random.Random(2), n) for n in (30, 2, 9)]
    key = next(k for k, v in body.items() if v is None)
    answer = await _post(
        create_app(scorer, warmup=False), path, {**body, key: docs, "max_tokens_per_doc": 3}
    )
    assert answer.status_code == 200
    assert answer.headers["X-Truncated-Documents"] == "0,2"
    expected = CrossEncoderScorer(modernbert_dir, device="cpu", max_tokens_per_doc=3).score(
        QUERY, docs
    )
    data = answer.json()
    rows = data if isinstance(data, list) else data.get("results") or data["data"]
    got = {r["index"]: r.get("relevance_score", r.get("score")) for r in rows}
    assert got == pytest.approx({i: s.value for i, s in enumerate(expected)}, abs=1e-5)


async def test_max_tokens_per_doc_is_refused_where_it_cannot_be_applied() -> None:
    app = create_app(FunctionScorer(lambda q, d: 0.0), warmup=False)
    answer = await _post(
        app, "/v2/rerank", {"query": QUERY, "documents": ["a"], "max_tokens_per_doc": 3}
    )
    assert answer.status_code == 422
    assert "max_tokens_per_doc" in answer.text


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_matryoshka_checkpoint(tmp_path_factory.mktemp("mm") / "mmbert-2d")


async def test_a_served_matryoshka_cascade_keeps_k_per_request(mm_dir: Path) -> None:
    scorer = MatryoshkaScorer(mm_dir, device="cpu", exit_layer=2, keep=2, batch_tokens=16)
    docs = [random_text(random.Random(3), n) for n in (12, 3, 30, 7, 20)]
    # A budget far below the request: a cascade request still runs whole, as one list.
    app = create_app(scorer, max_batch_tokens=16, warmup=False)
    answer = await _post(app, "/v2/rerank", {"query": QUERY, "documents": docs})
    assert answer.status_code == 200
    expected = rank(scorer.score(QUERY, docs))
    assert [r["index"] for r in answer.json()["results"]] == [r.index for r in expected]
    got = [r["relevance_score"] for r in answer.json()["results"]]
    assert got == pytest.approx([r.score.value for r in expected], abs=1e-5)


async def test_a_served_cascade_ranks_the_second_stage_first() -> None:
    cascade = Cascade(
        FunctionScorer(lambda q, d: float(len(d))),
        FunctionScorer(lambda q, d: -100.0 - len(d)),
        keep=2,
    )
    docs = ["a", "bbbb", "cc", "ddd"]
    answer = await _post(
        create_app(cascade, warmup=False), "/v2/rerank", {"query": QUERY, "documents": docs}
    )
    assert [r["index"] for r in answer.json()["results"]] == [3, 1, 2, 0]
