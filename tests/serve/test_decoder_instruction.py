"""A served decoder reranker: Cohere and TEI requests may carry an ``instruction``; the
batcher keeps each batch to one instruction; a model that takes none refuses it (422)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.serve import create_app
from rerank_plugins.testing import make_qwen3_reranker_checkpoint

DOCS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]
QUERY = "w1 w5"
INSTRUCTION = "Find documents that share a word with the query"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> DecoderScorer:
    directory = make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3")
    return DecoderScorer(directory, device="cpu")


async def test_cohere_and_tei_requests_carry_the_instruction(decoder: DecoderScorer) -> None:
    app = create_app(decoder, warmup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        told, plain, tei = await asyncio.gather(
            client.post(
                "/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": INSTRUCTION}
            ),
            client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS}),
            client.post(
                "/rerank",
                json={
                    "query": QUERY,
                    "texts": DOCS,
                    "instruction": INSTRUCTION,
                    "raw_scores": True,
                },
            ),
        )
    await app.state.batcher.stop()
    assert told.status_code == plain.status_code == tei.status_code == 200, told.text
    want = [s.value for s in decoder.score(QUERY, DOCS, instruction=INSTRUCTION)]
    default = [s.value for s in decoder.score(QUERY, DOCS)]
    assert want != pytest.approx(default, abs=1e-6)  # the instruction matters
    got = {r["index"]: r["relevance_score"] for r in told.json()["results"]}
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(want, abs=1e-5)
    got = {r["index"]: r["relevance_score"] for r in plain.json()["results"]}
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(default, abs=1e-5)
    # raw_scores asks a PairScorer for logits; the decoder (scored by query groups) gives
    # its own scores, as every non-pair scorer behind the server does.
    tei_scores = {r["index"]: r["score"] for r in tei.json()}
    assert [tei_scores[i] for i in range(len(DOCS))] == pytest.approx(want, abs=1e-5)


async def test_a_model_without_instructions_refuses_one(modernbert_dir: Path) -> None:
    app = create_app(CrossEncoderScorer(modernbert_dir, device="cpu"), warmup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        answer = await client.post(
            "/v1/rerank", json={"query": QUERY, "documents": DOCS, "instruction": INSTRUCTION}
        )
    await app.state.batcher.stop()
    assert answer.status_code == 422
    assert "takes no instruction" in answer.text
