"""Sizes in config.json are bounded by the weights present, before anything is built."""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from pathlib import Path

import pytest

from rerank_plugins import load_scorer
from rerank_plugins.errors import CheckpointError
from rerank_plugins.local.bounds import MAX_ROPE_WINDOW, bounded_config


@pytest.fixture()
def copy(modernbert_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(modernbert_dir, tmp_path / "ckpt"))


def edit_config(directory: Path, drop: tuple[str, ...] = (), **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    for key in drop:
        config.pop(key, None)
    path.write_text(json.dumps(config))


def test_a_million_layers_claimed_is_refused_before_anything_is_built(copy: Path) -> None:
    edit_config(
        copy, drop=("layer_types",), num_hidden_layers=1_000_000, global_attn_every_n_layers=2
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with pytest.raises(
        CheckpointError, match="num_hidden_layers is 1000000 but the weights hold 4"
    ):
        load_scorer(copy, device="cpu")
    assert time.perf_counter() - started < 10
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200


@pytest.mark.parametrize("key", ["hidden_size", "intermediate_size", "vocab_size"])
def test_a_size_no_weight_carries_is_refused(copy: Path, key: str) -> None:
    edit_config(copy, **{key: 10**9})
    with pytest.raises(CheckpointError, match=f"{key} is 1000000000"):
        load_scorer(copy, device="cpu")


def test_a_rope_window_of_10_to_the_12_is_capped_and_said(
    copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    edit_config(copy, max_position_embeddings=10**12)
    with caplog.at_level(logging.WARNING):
        scorer = load_scorer(copy, device="cpu")
    assert scorer.max_length == MAX_ROPE_WINDOW  # type: ignore[attr-defined]
    assert "max_position_embeddings=1000000000000" in caplog.text
    assert len(scorer.score("q", ["alpha beta"])) == 1


def test_a_window_beyond_the_position_table_is_capped_to_the_table(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file(
        {
            "bert.embeddings.position_embeddings.weight": torch.zeros(64, 8),
            "bert.encoder.layer.0.attention.self.query.weight": torch.zeros(8, 8),
        },
        str(tmp_path / "model.safetensors"),
    )
    config = {"max_position_embeddings": 10**12, "num_hidden_layers": 1, "hidden_size": 8}
    assert bounded_config(tmp_path, config)["max_position_embeddings"] == 64
    assert bounded_config(tmp_path, {**config, "max_position_embeddings": 32}) == {
        **config,
        "max_position_embeddings": 32,
    }
    with pytest.raises(CheckpointError, match="num_hidden_layers is 2"):
        bounded_config(tmp_path, {**config, "num_hidden_layers": 2})
