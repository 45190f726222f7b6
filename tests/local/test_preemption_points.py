"""Every native trunk offers a preemption point per layer, and a forward run inside one
(a batcher's short batch) leaves the outer forward's scores unchanged."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from rerank_plugins import load_scorer
from rerank_plugins.scoring import preemptible
from rerank_plugins.testing import (
    make_gte_new_checkpoint,
    make_modernbert_checkpoint,
    make_qwen3_reranker_checkpoint,
)

BUILDERS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "modernbert": (lambda d: make_modernbert_checkpoint(d), "num_hidden_layers"),
    "gte": (lambda d: make_gte_new_checkpoint(d), "num_hidden_layers"),
    "qwen3": (lambda d: make_qwen3_reranker_checkpoint(d), "num_hidden_layers"),
}
DOCS = ["a first document about rivers", "another one", "the third, on mountains and snow"]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_a_forward_inside_a_preemption_point_changes_nothing(tmp_path: Path, kind: str) -> None:
    build, layers_key = BUILDERS[kind]
    directory = build(tmp_path / kind)
    layers = json.loads((directory / "config.json").read_text())[layers_key]
    scorer = load_scorer(str(directory), device="cpu", cache=False)
    alone = [s.value for s in scorer.score("rivers", DOCS)]
    inner_alone = [s.value for s in scorer.score("snow", DOCS[::-1])]
    points = 0
    inner: list[list[float]] = []

    def hook() -> None:
        nonlocal points
        points += 1
        if points == 2:  # a whole other forward between two layers of this one
            inner.append([s.value for s in scorer.score("snow", DOCS[::-1])])

    with preemptible(hook):
        outer = [s.value for s in scorer.score("rivers", DOCS)]
    assert points >= layers  # at least one point per layer of the forward
    assert outer == pytest.approx(alone, abs=1e-6)
    assert inner == [pytest.approx(inner_alone, abs=1e-6)]
