"""Sharded checkpoints in the Hugging Face cache load (their files are symlinks into
``blobs/``), by snapshot directory and by hub id offline; links that leave the cache's repo
folder are still refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins import load_scorer
from rerank_plugins.errors import CheckpointError
from rerank_plugins.testing import make_modernbert_checkpoint

REPO = "org/tiny-reranker"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def sharded_checkpoint(directory: Path) -> Path:
    """The tiny ModernBERT cross-encoder with its weights in two shards and an index."""
    from safetensors.torch import load_file, save_file

    make_modernbert_checkpoint(directory)
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:]), start=1):
        file = f"model-{k:05d}-of-00002.safetensors"
        save_file({n: state[n].contiguous() for n in part}, str(directory / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def hf_cache(home: Path, source: Path) -> Path:
    """Lay ``source`` out as huggingface_hub does: blobs named by hash, snapshot links
    ``snapshots/<rev>/<file> -> ../../blobs/<hash>``, refs/main; returns the snapshot."""
    repo = home / "hub" / ("models--" + REPO.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        data = file.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


def test_a_sharded_checkpoint_in_the_cache_loads_by_snapshot_directory(tmp_path: Path) -> None:
    reference = load_scorer(sharded_checkpoint(tmp_path / "plain"), device="cpu")
    snapshot = hf_cache(tmp_path / "hf", tmp_path / "plain")
    assert (snapshot / "model-00001-of-00002.safetensors").is_symlink()
    scorer = load_scorer(snapshot, device="cpu")
    docs = ["alpha beta", "gamma"]
    assert scorer.score("q", docs) == reference.score("q", docs)
    # One checkpoint, two spellings (a plain copy, a cache snapshot): one fingerprint.
    assert scorer.identity()["sha256"] == reference.identity()["sha256"]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_sharded_checkpoint_in_the_cache_loads_by_hub_id_offline(tmp_path: Path) -> None:
    plain = load_scorer(sharded_checkpoint(tmp_path / "plain"), device="cpu")
    hf_cache(tmp_path / "hf", tmp_path / "plain")
    code = (
        "from rerank_plugins import load_scorer\n"
        f"s = load_scorer({REPO!r}, device='cpu')\n"
        "print(s.identity()['sha256'], s.directory, len(s.score('q', ['alpha beta', 'gamma'])))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(" 2") and REVISION in proc.stdout
    assert proc.stdout.split()[0] == plain.identity()["sha256"]  # type: ignore[attr-defined]


def test_a_cache_link_out_of_the_repo_folder_is_refused(tmp_path: Path) -> None:
    sharded_checkpoint(tmp_path / "plain")
    snapshot = hf_cache(tmp_path / "hf", tmp_path / "plain")
    outside = tmp_path / "elsewhere.safetensors"
    shard = snapshot / "model-00002-of-00002.safetensors"
    outside.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(outside)  # out of models--org--tiny-reranker/
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_scorer(snapshot, device="cpu")


def test_a_snapshot_link_into_another_repo_of_the_cache_is_refused(tmp_path: Path) -> None:
    sharded_checkpoint(tmp_path / "plain")
    snapshot = hf_cache(tmp_path / "hf", tmp_path / "plain")
    other = tmp_path / "hf" / "hub" / "models--someone--else" / "blobs"
    other.mkdir(parents=True)
    shard = snapshot / "model-00002-of-00002.safetensors"
    (other / "x").write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(Path("..") / ".." / ".." / "models--someone--else" / "blobs" / "x")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_scorer(snapshot, device="cpu")
