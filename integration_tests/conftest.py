"""A real third-party rerank server on loopback: Infinity, in its own virtualenv.

The virtualenv comes from ``integration_tests/setup_infinity.sh`` (default location
``integration_tests/.venv``; ``RERANK_INFINITY_VENV`` points elsewhere). Without it the
tests are skipped, unless ``RERANK_REQUIRE_INTEGRATION=1`` (CI), which makes that a
failure. The server serves a random-weight ModernBERT cross-encoder that the session
builds with ``make_modernbert_checkpoint``; nothing is downloaded.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rerank_plugins.testing import free_port, make_modernbert_checkpoint, wait_until_healthy

HERE = Path(__file__).resolve().parent
STARTUP_SECONDS = 180.0


@dataclass(frozen=True)
class InfinityServer:
    base_url: str  # ends in /v1
    api_key: str
    model: str
    checkpoint: Path


def _venv() -> Path:
    return Path(os.environ.get("RERANK_INFINITY_VENV") or HERE / ".venv")


@pytest.fixture(scope="session")
def infinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfinityServer]:
    executable = _venv() / "bin" / "infinity_emb"
    if not executable.exists():
        message = (
            f"no Infinity server at {executable}; run: bash integration_tests/setup_infinity.sh"
        )
        if os.environ.get("RERANK_REQUIRE_INTEGRATION") == "1":
            pytest.fail(message)
        pytest.skip(message)
    checkpoint = make_modernbert_checkpoint(tmp_path_factory.mktemp("infinity") / "tiny-reranker")
    port, key, model = free_port(), secrets.token_urlsafe(16), "tiny-reranker"
    log = tmp_path_factory.mktemp("infinity-log") / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(executable), "v2",
        "--model-id", str(checkpoint),
        "--served-model-name", model,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--url-prefix", "/v1",
        "--api-key", key,
        "--engine", "torch",
        "--device", "cpu",
        "--dtype", "float32",
        "--no-trust-remote-code",
        "--no-bettertransformer",
        "--no-compile",
        "--no-model-warmup",
        "--no-vector-disk-cache",
        "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_healthy(
            f"http://127.0.0.1:{port}/health",
            process,
            log=log,
            seconds=STARTUP_SECONDS,
            interval=0.5,
            name="Infinity",
        )
        yield InfinityServer(base_url, key, model, checkpoint)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
