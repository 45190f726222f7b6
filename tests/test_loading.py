"""load_scorer: the checkpoint's own files pick the scorer; bad specs get clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rerank_plugins import UnsupportedModelError, load_scorer
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint


def test_a_masked_lm_is_refused_with_a_pointer_to_fill_mask(tmp_path: Path) -> None:
    directory = make_modernbert_checkpoint(tmp_path / "mlm", head="mlm")
    with pytest.raises(UnsupportedModelError, match="FillMask"):
        load_scorer(str(directory))


def test_the_name_does_not_pick_the_scorer(modernbert_dir: Path, tmp_path: Path) -> None:
    misleading = tmp_path / "GTE-ModernColBERT-v1-matryoshka"
    shutil.copytree(modernbert_dir, misleading)
    assert isinstance(load_scorer(str(misleading), device="cpu"), CrossEncoderScorer)


@pytest.mark.parametrize("spec", ["not a model", "/no/such/dir", "./relative/missing", "a/b/c"])
def test_specs_that_are_neither_a_directory_nor_a_hub_id(spec: str) -> None:
    with pytest.raises(UnsupportedModelError):
        load_scorer(spec)


def test_a_file_is_not_a_checkpoint(modernbert_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="directory"):
        load_scorer(str(modernbert_dir / "config.json"))


def test_missing_or_broken_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnsupportedModelError, match=r"config\.json"):
        load_scorer(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(UnsupportedModelError, match="JSON"):
        load_scorer(str(tmp_path / "bad"))


def test_pickled_weights_alone_are_not_loaded(modernbert_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(modernbert_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(UnsupportedModelError):
        load_scorer(str(pickled), device="cpu")


def test_config_is_read_not_guessed(modernbert_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "encoder"
    shutil.copytree(modernbert_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["ModernBertModel"]}))
    with pytest.raises(UnsupportedModelError, match="not a reranker"):
        load_scorer(str(other))


def test_a_cascade_of_two_kinds_passes_overflow_and_instruction_to_the_second() -> None:
    from rerank_plugins.loading import load_model
    from rerank_plugins.testing import FunctionScorer

    seen: dict[str, dict[str, object]] = {}

    def load(model: str, **options: object) -> FunctionScorer:
        seen[model] = options
        return FunctionScorer(lambda q, d: float(len(d)))

    options = {
        "cascade": "http://127.0.0.1:9/v1/rerank",
        "keep": 2,
        "device": "cpu",
        "overflow": "chunk",
        "instruction": "find the answer",
        "calibration": "cal.json",
    }
    load_model("DIR", options, load=load)
    assert seen["DIR"]["instruction"] == "find the answer"
    assert seen["http://127.0.0.1:9/v1/rerank"] == {
        "overflow": "chunk",
        "instruction": "find the answer",
    }
