"""First run without the hub: a typed, one-line error with the ways out; hub options."""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from rerank_plugins import ModelLoadError, UnsupportedModelError, load_scorer

ROOT = Path(__file__).resolve().parents[1]
MODEL = "Alibaba-NLP/gte-reranker-modernbert-base"


def run_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf-home"), **env)
    return subprocess.run(
        [sys.executable, "-m", "rerank_plugins", "rerank", "query", "doc", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def check_one_line_with_the_ways_out(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert f"could not get the files of model {MODEL!r}" in line
    assert "--model DIR / model=DIR" in line  # way out 1: a local directory
    assert f"hf download {MODEL}" in line  # way out 2: a warm cache
    assert "HF_HUB_OFFLINE=1" in line  # way out 3: the cache only
    assert "python -m rerank_plugins.testing DIR" in line  # way out 4: a tiny local one
    return line


def test_the_one_line_builder_of_the_first_run_message_gives_a_working_model(
    tmp_path: Path,
) -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    built = subprocess.run(
        [sys.executable, "-m", "rerank_plugins.testing", str(tmp_path / "tiny")],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip() == str(tmp_path / "tiny")
    scores = load_scorer(str(tmp_path / "tiny"), device="cpu").score("q", ["a b", "c"])
    assert len(scores) == 2


def test_offline_without_a_cache_says_what_failed_and_the_ways_out(tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"HF_HUB_OFFLINE": "1"}, "--model", MODEL)
    assert result.returncode == 2
    line = check_one_line_with_the_ways_out(result.stderr)
    assert "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache" in line
    assert str(tmp_path / "hf-home") in line  # the cache that was looked in


def test_an_unreachable_hub_says_so_and_chains_the_hub_error(tmp_path: Path) -> None:
    # Port 9 on the loopback refuses connections: the real huggingface_hub fails to connect.
    code = (
        "from rerank_plugins import load_scorer\n"
        f"try:\n    load_scorer({MODEL!r})\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, type(exc.__cause__).__name__)\n"
        "    print(exc)\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    environ.update(
        PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120
    )
    kinds, message = result.stdout.splitlines()[:2]
    assert kinds == "ModelLoadError LocalEntryNotFoundError"
    assert "the hub could not be reached" in message
    check_one_line_with_the_ways_out(message)


def test_a_load_error_is_not_an_unsupported_model_error() -> None:
    assert not issubclass(ModelLoadError, UnsupportedModelError)


def test_the_download_fetches_only_files_a_scorer_reads() -> None:
    from rerank_plugins.local.checkpoint import _ALLOW_PATTERNS

    repo = [
        "config.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "sentencepiece.bpe.model",
        "vocab.txt",
        "classification_heads.pt",
        "1_Dense/config.json",
        "1_Dense/model.safetensors",
        "pytorch_model.bin",
        "training_args.bin",
        "optimizer.pt",
        "onnx/model.onnx",
        "1_Dense/pytorch_model.bin",
    ]
    fetched = {f for f in repo if any(fnmatch.fnmatch(f, p) for p in _ALLOW_PATTERNS)}
    assert fetched == set(repo[:11])
    assert not any(f.endswith(".bin") for f in fetched)
    assert [f for f in fetched if f.endswith(".pt")] == ["classification_heads.pt"]


def test_hub_options_reach_the_download_only(
    modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return str(modernbert_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    scorer = load_scorer(
        "org/private-model",
        device="cpu",
        token=SecretStr("hf_secret"),
        cache_dir="/somewhere/hf",
        revision="v2",
        local_files_only=True,
    )
    assert len(calls) == 1
    call = calls[0]
    assert call["repo_id"] == "org/private-model"
    assert call["token"] == "hf_secret"
    assert call["cache_dir"] == "/somewhere/hf"
    assert call["revision"] == "v2"
    assert call["local_files_only"] is True
    assert Path(scorer.directory) == modernbert_dir  # type: ignore[attr-defined]
    assert "hf_secret" not in repr(vars(scorer))  # the token is not kept on the scorer


def test_without_a_token_the_hub_reads_hf_token_itself(
    modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    seen: list[Any] = []

    def fake_download(repo_id: str, **kwargs: Any) -> str:
        seen.append(kwargs["token"])
        return str(modernbert_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    load_scorer("org/model", device="cpu")
    # token=None is huggingface_hub's "use $HF_TOKEN or the stored login"; it resolves it:
    assert seen == [None]
    assert huggingface_hub.get_token() == "hf_from_env"
