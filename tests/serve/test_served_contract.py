"""The served-scorer contract: ``RemoteScorer`` over ``create_app(local scorer)``, in
process through ``httpx.ASGITransport``, honours ``ScorerContract`` and gives the local
scores. The async client runs the app in the test's event loop; the sync client reaches
another app through ``httpx.MockTransport`` handing each request to ``ASGITransport`` in
an event loop of its own (a server's loop, in a thread)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.serve import create_app
from tests.contract import QUERY, ScorerContract

from .conftest import WINDOW

# The local scorer through HTTP: JSON floats round-trip exactly, batches differ in noise.
TOLERANCE = 1e-5


@contextmanager
def sync_client(app: Any) -> Iterator[httpx.Client]:
    """An ``httpx.Client`` whose requests ``app`` answers in an event loop of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    inner = httpx.AsyncClient(transport=httpx.ASGITransport(app))

    def handle(request: httpx.Request) -> httpx.Response:
        copy = httpx.Request(
            request.method, str(request.url), headers=request.headers, content=request.read()
        )
        answer = asyncio.run_coroutine_threadsafe(inner.send(copy), loop).result(timeout=60)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    try:
        with httpx.Client(transport=httpx.MockTransport(handle)) as client:
            yield client
    finally:
        asyncio.run_coroutine_threadsafe(app.state.batcher.stop(), loop).result(timeout=60)
        asyncio.run_coroutine_threadsafe(inner.aclose(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


class ServedContract(ScorerContract):
    tolerance = TOLERANCE

    @pytest.fixture
    async def scorer(self, local: CrossEncoderScorer) -> AsyncIterator[RemoteScorer]:
        # Two apps over one scorer: a batcher belongs to the event loop it started in.
        # The client sends its requests concurrently; merged into one batch, they would
        # get float noise of another batch shape, and the contract wants equal answers
        # for equal input: one request per batch.
        options: dict[str, Any] = {"model_name": "tiny", "warmup": False, "max_batch_requests": 1}
        async_app = create_app(local, **options)
        with sync_client(create_app(local, **options)) as client:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(async_app)) as aclient:
                yield RemoteScorer(
                    "http://served.test",
                    dialect="cohere",
                    max_batch_size=3,  # the contract's documents go out in several requests
                    client=client,
                    async_client=aclient,
                )
            await async_app.state.batcher.stop()

    def test_scores_are_the_local_scorers(
        self, scorer: RemoteScorer, local: CrossEncoderScorer, docs: list[str]
    ) -> None:
        served = scorer.score(QUERY, docs)
        expected = local.score(QUERY, docs)
        assert [s.value for s in served] == pytest.approx(
            [s.value for s in expected], abs=TOLERANCE
        )
        assert [(s.tokens, s.truncated) for s in served] == [
            (s.tokens, s.truncated) for s in expected
        ]

    async def test_async_scores_are_the_local_scorers(
        self, scorer: RemoteScorer, local: CrossEncoderScorer, docs: list[str]
    ) -> None:
        served = await scorer.ascore(QUERY, docs)
        assert [s.value for s in served] == pytest.approx(
            [s.value for s in local.score(QUERY, docs)], abs=TOLERANCE
        )


class TestServedPackedScorer(ServedContract):
    @pytest.fixture
    def local(self, local_scorer: CrossEncoderScorer) -> CrossEncoderScorer:
        return local_scorer


class TestServedPaddedScorer(ServedContract):
    """The transformers engine pads: the batcher budgets its batches as padded tensors."""

    @pytest.fixture(scope="class")
    @classmethod
    def local(cls, modernbert_dir: Path) -> CrossEncoderScorer:
        scorer = CrossEncoderScorer(
            modernbert_dir, device="cpu", engine="transformers", max_length=WINDOW
        )
        assert scorer.padded
        return scorer
