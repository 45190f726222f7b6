"""Batch and pack once: the batcher forms the batch the engine runs, in one forward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine import fused
from rerank_plugins.serve import create_app
from rerank_plugins.serve.app import DEFAULT_BATCH_TOKENS, warmup_documents
from rerank_plugins.testing import FunctionScorer

DOCS = ["w1 w2 w3 w4 w5 w6", "w2", "w3 w4 w5", "", "w7 w8", "w1 w1 w1 w1"]


@pytest.fixture
def counted(modernbert_dir: Path) -> tuple[CrossEncoderScorer, list[int]]:
    """A private scorer with a tiny budget of its own, whose forwards are counted."""
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", batch_tokens=8, cache=False)
    sizes: list[int] = []
    forward = scorer.classifier.logits

    def logits(batch: Any) -> Any:
        sizes.append(len(batch))
        return forward(batch)

    scorer.classifier.logits = logits  # type: ignore[method-assign]
    return scorer, sizes


def test_score_batch_is_one_forward_with_the_scores_of_score_pairs(
    counted: tuple[CrossEncoderScorer, list[int]],
) -> None:
    scorer, sizes = counted
    pairs = sorted(scorer.encode_pairs("w1 w2", DOCS), key=lambda p: -p.tokens)
    expected = scorer.score_pairs(pairs, raw=True)
    assert len(sizes) > 1  # its own budget (8 tokens) splits the pairs
    sizes.clear()
    got = scorer.score_batch(pairs, raw=True)
    assert sizes == [len(DOCS)]
    assert [s.value for s in got] == pytest.approx([s.value for s in expected], abs=1e-5)
    assert [s.tokens for s in got] == [s.tokens for s in expected]


async def test_the_server_runs_the_batch_its_batcher_formed_in_one_forward(
    counted: tuple[CrossEncoderScorer, list[int]],
) -> None:
    scorer, sizes = counted
    app = create_app(scorer, max_batch_tokens=4096, warmup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        answer = await client.post("/v1/rerank", json={"query": "w1 w2", "documents": DOCS})
    await app.state.batcher.stop()
    assert answer.status_code == 200
    # The scorer's own budget (8) would split them; the batcher's (4096) holds all six.
    assert sizes == [len(DOCS)]
    expected = scorer.score("w1 w2", DOCS)
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    assert got == pytest.approx({i: s.value for i, s in enumerate(expected)}, abs=1e-5)


def test_the_batch_budget_is_asked_of_the_scorer(modernbert_dir: Path) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", batch_tokens=777)
    assert create_app(scorer).state.batcher.max_batch_tokens == 777
    assert create_app(scorer, max_batch_tokens=99).state.batcher.max_batch_tokens == 99
    remote_like = FunctionScorer(lambda q, d: 0.0)  # no batch_tokens of its own
    assert create_app(remote_like).state.batcher.max_batch_tokens == DEFAULT_BATCH_TOKENS
    assert create_app(scorer).state.batcher.padded is scorer.padded is False


async def test_a_request_is_checked_once(
    counted: tuple[CrossEncoderScorer, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rerank_plugins.local.cross_encoder as cross_encoder
    import rerank_plugins.serve.service as service

    checks: list[str] = []
    real = cross_encoder.check_inputs

    def counting(query: object, documents: object) -> list[str]:
        checks.append(str(query))
        return real(query, documents)

    monkeypatch.setattr(cross_encoder, "check_inputs", counting)
    monkeypatch.setattr(service, "check_inputs", counting)
    scorer, _ = counted
    app = create_app(scorer, warmup=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
        answer = await client.post("/rerank", json={"query": "w1", "texts": DOCS})
        blank = await client.post("/v1/rerank", json={"query": " ", "documents": []})
    await app.state.batcher.stop()
    assert answer.status_code == 200 and blank.status_code == 422
    assert checks == ["w1", " "]


async def test_warm_up_runs_one_document_then_a_full_batch(
    counted: tuple[CrossEncoderScorer, list[int]],
) -> None:
    # The full batch compiles the CPU fast path before traffic arrives (models page).
    scorer, sizes = counted
    app = create_app(scorer, max_batch_tokens=4096)
    async with app.router.lifespan_context(app):
        assert sizes == [1, len(warmup_documents(4096))]
    assert len(warmup_documents(4096)) * 166 <= 4096 < (len(warmup_documents(4096)) + 1) * 166


async def test_warm_up_leaves_the_cpu_fast_path_compiled(
    modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # By default the fast path compiles in the background from a model's second large
    # forward; a server compiles it during the warm-up instead, before the port opens.
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", cache=False)
    gate = scorer.classifier.model.trunk.fusion
    assert not gate.ready
    app = create_app(scorer, max_batch_tokens=4096)
    async with app.router.lifespan_context(app):
        assert gate.ready == fused.fusion_enabled(torch.device("cpu"))
