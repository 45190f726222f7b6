"""Shared fixtures of the evaluation tests: the packaged collection, the fake server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerank_plugins.testing import write_eval_fixture
from rerank_plugins.testing.fake_server import FakeRerankServer, serve

pytest.importorskip("ir_measures")


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_eval_fixture(tmp_path_factory.mktemp("eval") / "fixture")


@pytest.fixture()
def fake_url() -> Iterator[str]:
    """The fake rerank server (cohere dialect) on a loopback port, stopped after the test."""
    httpd = serve(FakeRerankServer("cohere"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
