"""RemoteScorer honours the scorer contract against an in-process rerank server.

The server is the shipped ``FakeRerankServer`` (deterministic scores, results sorted by
score, wrong echoed text), mounted with ``httpx.MockTransport`` for the sync client and
as an ASGI app through ``httpx.ASGITransport`` for the async one: a fake server, not a
fake of our classes.
"""

from __future__ import annotations

import httpx
import pytest

from rerank_plugins.remote import DIALECTS, RemoteScorer
from rerank_plugins.testing.fake_server import FakeRerankServer
from tests.contract import ScorerContract


@pytest.fixture(params=sorted(DIALECTS))
def scorer(request: pytest.FixtureRequest) -> RemoteScorer:
    # A small server limit, so the contract's documents go out in several requests.
    server = FakeRerankServer(request.param, api_key="contract-key", max_batch_size=3)
    return RemoteScorer(
        "http://127.0.0.1:8000/v1",
        dialect=request.param,
        api_key="contract-key",
        max_batch_size=3,
        client=httpx.Client(transport=httpx.MockTransport(server.handle)),
        async_client=httpx.AsyncClient(transport=httpx.ASGITransport(server)),
    )


class TestRemoteScorerContract(ScorerContract):
    tolerance = 0.0  # a deterministic server: exact equality
