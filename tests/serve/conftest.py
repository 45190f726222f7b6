"""Real uvicorn servers on 127.0.0.1 (random free ports), started and stopped by the tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from rerank_plugins.local.cross_encoder import CrossEncoderScorer  # noqa: E402
from rerank_plugins.serve import create_app  # noqa: E402

WINDOW = 64  # a small window: "over the window" costs nothing to test


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread; yields its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="package")
def local_scorer(modernbert_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(modernbert_dir, device="cpu", max_length=WINDOW)


@pytest.fixture(scope="package")
def base_url(local_scorer: CrossEncoderScorer) -> Iterator[str]:
    """One server over the local scorer, shared by the read-only tests."""
    with serving(create_app(local_scorer, model_name="tiny")) as url:
        yield url
