"""Shared fixtures: tiny random checkpoints in the real on-disk layout, built once per run."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from rerank_plugins.testing import make_modernbert_checkpoint, random_text

# Large CPU forwards fuse from the first one, compiling inline (the default, "auto",
# compiles in the background from the second one on): a test that scores twice must not
# see a compilation finish in between. Subprocesses inherit it. The background path has
# tests of its own (tests/local/test_fused.py).
os.environ.setdefault("RERANK_PLUGINS_COMPILE", "inline")

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
"""Real config and tokenizer files of the seed models (outside the repo; may be absent)."""


@pytest.fixture(scope="session")
def modernbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ModernBertForSequenceClassification, mean pooling, 4 layers, ±4-token local window."""
    return make_modernbert_checkpoint(tmp_path_factory.mktemp("ckpt") / "modernbert-seqcls")


@pytest.fixture()
def docs() -> list[str]:
    """Documents of very different lengths (several longer than the local window)."""
    rng = random.Random(1234)
    return [random_text(rng, n) for n in (5, 40, 1, 120, 17, 300, 9, 64)]
