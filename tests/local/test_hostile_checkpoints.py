"""Checkpoints built to hurt: every one is refused with a CheckpointError naming the file,
before anything is allocated, and no code shipped inside a checkpoint ever runs."""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rerank_plugins import load_scorer
from rerank_plugins.errors import CheckpointError, RerankError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_colbert_checkpoint

EVIL_CODE = """
from pathlib import Path
Path(__file__).with_name("PWNED").write_text("checkpoint code ran")
raise SystemExit("checkpoint code ran")
"""


@pytest.fixture()
def copy(modernbert_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny ModernBERT cross-encoder to damage."""
    return Path(shutil.copytree(modernbert_dir, tmp_path / "ckpt"))


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def load(directory: Path) -> object:
    return load_scorer(str(directory), device="cpu")


@pytest.fixture()
def answer_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever asks "Do you wish to run the custom code? [y/N]" gets "y"."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))


def plant_remote_code(directory: Path, *, keep_tokenizer_json: bool) -> None:
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilTokenizer", None]}
    edit_config(
        directory,
        model_type="evil",
        architectures=["EvilForSequenceClassification"],
        auto_map={**auto_map, "AutoModelForSequenceClassification": "evil.EvilModel"},
    )
    tok_config = json.loads((directory / "tokenizer_config.json").read_text())
    tok_config["auto_map"] = auto_map
    tok_config["tokenizer_class"] = "EvilTokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(tok_config))
    if not keep_tokenizer_json:
        (directory / "tokenizer.json").unlink()
    (directory / "evil.py").write_text(EVIL_CODE)


# -- code execution -------------------------------------------------------------------


@pytest.mark.usefixtures("answer_yes")
def test_a_tokenizer_needing_remote_code_is_refused_and_never_run(copy: Path) -> None:
    plant_remote_code(copy, keep_tokenizer_json=False)
    with pytest.raises(CheckpointError, match="auto_map") as info:
        load(copy)
    assert info.value.path is not None and info.value.path.endswith("tokenizer_config.json")
    assert not (copy / "PWNED").exists()


@pytest.mark.usefixtures("answer_yes")
def test_a_model_needing_remote_code_is_refused_and_never_run(copy: Path) -> None:
    plant_remote_code(copy, keep_tokenizer_json=True)
    with pytest.raises(CheckpointError, match="auto_map") as info:
        load(copy)
    assert info.value.path is not None and info.value.path.endswith("config.json")
    assert not (copy / "PWNED").exists()


def test_every_from_pretrained_call_in_the_package_passes_trust_remote_code_false() -> None:
    import ast

    import rerank_plugins

    root = Path(rerank_plugins.__file__).parent
    calls = 0
    for file in root.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
            ):
                calls += 1
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("trust_remote_code")
                assert isinstance(value, ast.Constant) and value.value is False, (
                    f"{file}:{node.lineno} calls from_pretrained without trust_remote_code=False"
                )
    assert calls >= 2  # the tokenizer fallback and the generic transformers path


# -- unreadable or inconsistent files --------------------------------------------------


def truncate_safetensors(directory: Path) -> None:
    path = directory / "model.safetensors"
    path.write_bytes(path.read_bytes()[:12])


def huge_header_safetensors(directory: Path) -> None:
    # A header length far beyond the file: must not be trusted for an allocation.
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")


def config_is_a_directory(directory: Path) -> None:
    (directory / "config.json").unlink()
    (directory / "config.json").mkdir()


def config_not_utf8(directory: Path) -> None:
    (directory / "config.json").write_bytes('{"model_type": "modernbert\xe9"}'.encode("latin-1"))


def config_deeply_nested(directory: Path) -> None:
    (directory / "config.json").write_text("[" * 200_000)


def config_not_an_object(directory: Path) -> None:
    (directory / "config.json").write_text("[1, 2]")


def sharded(directory: Path, weight_map: object) -> None:
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": weight_map}
    if weight_map is None:
        del index["weight_map"]
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def index_without_weight_map(directory: Path) -> None:
    sharded(directory, None)


def index_with_missing_shard(directory: Path) -> None:
    sharded(directory, {"model.embeddings.tok_embeddings.weight": "model-00002.safetensors"})


def index_outside_the_directory(directory: Path) -> None:
    other = directory.parent / "other"
    shutil.copytree(directory, other)
    sharded(directory, {"model.embeddings.tok_embeddings.weight": "../other/model.safetensors"})


def index_absolute_path(directory: Path) -> None:
    sharded(directory, {"x": str((directory / "model-00001-of-00001.safetensors").resolve())})
    shutil.copy(
        directory / "model-00001-of-00001.safetensors", directory.parent / "abs.safetensors"
    )
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": str(directory.parent / "abs.safetensors")}}))


def tokenizer_json_garbage(directory: Path) -> None:
    (directory / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')


HOSTILE_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated safetensors header": (truncate_safetensors, "model.safetensors"),
    "safetensors header length beyond the file": (huge_header_safetensors, "model.safetensors"),
    "config.json is a directory": (config_is_a_directory, "config.json"),
    "config.json is not UTF-8": (config_not_utf8, "config.json"),
    "config.json nested 200,000 deep": (config_deeply_nested, "config.json"),
    "config.json is not an object": (config_not_an_object, "config.json"),
    "index without weight_map": (index_without_weight_map, "model.safetensors.index.json"),
    "index names a missing shard": (index_with_missing_shard, "model-00002.safetensors"),
    "index names ../other/": (index_outside_the_directory, "model.safetensors.index.json"),
    "index names an absolute path": (index_absolute_path, "model.safetensors.index.json"),
    "tokenizer.json is not a tokenizer": (tokenizer_json_garbage, "tokenizer.json"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_a_hostile_file_is_a_checkpoint_error_naming_it(copy: Path, case: str) -> None:
    damage, file_name = HOSTILE_FILES[case]
    damage(copy)
    with pytest.raises(CheckpointError) as info:
        load(copy)
    assert info.value.path is not None and info.value.path.endswith(file_name), info.value
    assert file_name in str(info.value)


HOSTILE_CONFIGS: dict[str, dict[str, object]] = {
    "num_attention_heads: 0": {"num_attention_heads": 0},
    "num_attention_heads negative": {"num_attention_heads": -4},
    "hidden_size as a string": {"hidden_size": "32"},
    "num_hidden_layers as a float": {"num_hidden_layers": 4.0},
    "intermediate_size: 0": {"intermediate_size": 0},
    "vocab_size: true": {"vocab_size": True},
    "local_attention: -4": {"local_attention": -4},
    "local_attention: 0": {"local_attention": 0},
    "global_attn_every_n_layers: 0": {"layer_types": None, "global_attn_every_n_layers": 0},
    "norm_eps: NaN-like string": {"norm_eps": "nan"},
    "global_rope_theta negative": {"global_rope_theta": -1.0},
    "max_position_embeddings: 0": {"max_position_embeddings": 0},
    "layer_types not a list": {"layer_types": "full_attention"},
    "rope_parameters not an object": {"rope_parameters": [1, 2]},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_a_hostile_config_value_is_refused_before_allocation(copy: Path, case: str) -> None:
    edit_config(copy, **HOSTILE_CONFIGS[case])
    with pytest.raises(CheckpointError) as info:
        load(copy)
    assert "config.json" in str(info.value)


def test_a_shard_outside_the_directory_is_never_opened(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index_outside_the_directory(copy)
    import safetensors.torch

    opened: list[str] = []
    real = safetensors.torch.load_file
    monkeypatch.setattr(
        safetensors.torch, "load_file", lambda f, **k: opened.append(str(f)) or real(f, **k)
    )
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load(copy)
    assert opened == []


def test_heads_not_dividing_the_hidden_size_are_refused(copy: Path) -> None:
    edit_config(copy, num_attention_heads=5)
    with pytest.raises(RerankError, match="multiple"):
        load(copy)


def test_a_hostile_colbert_setting_is_a_checkpoint_error(tmp_path: Path) -> None:
    directory = make_colbert_checkpoint(tmp_path / "colbert")
    path = directory / "config_sentence_transformers.json"
    settings = json.loads(path.read_text())
    settings["query_length"] = "thirty-two"
    path.write_text(json.dumps(settings))
    with pytest.raises(CheckpointError):
        load(directory)


def test_wrong_arguments_are_still_a_type_error(modernbert_dir: Path) -> None:
    # The loading guard turns checkpoint trouble into CheckpointError, not caller bugs.
    with pytest.raises(TypeError):
        CrossEncoderScorer(modernbert_dir, no_such_option=1)  # type: ignore[call-arg]
