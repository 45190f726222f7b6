"""The options every local scorer shares, and the one token-budget policy."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank_plugins import ColBERTScorer, CrossEncoderScorer, FillMask, MatryoshkaScorer
from rerank_plugins.errors import InvalidInputError, UnknownOptionError
from rerank_plugins.local.base import LocalScorer
from rerank_plugins.local.engine.device import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    MAX_GPU_BATCH_TOKENS,
    default_batch_tokens,
)
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.testing import (
    make_colbert_checkpoint,
    make_matryoshka_checkpoint,
    make_modernbert_checkpoint,
)

CUDA = torch.device("cuda", 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"overflow": "wrap"},
        {"batch_tokens": 0},
        {"batch_tokens": -5},
        {"show_progress": "yes"},
        {"cache": 0},
    ],
)
def test_options_are_checked_once_with_a_typed_error(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        LocalOptions(**bad)


def test_hub_options_are_the_four_download_options() -> None:
    options = LocalOptions(revision="r1", local_files_only=True)
    assert options.hub() == {
        "revision": "r1",
        "cache_dir": None,
        "local_files_only": True,
        "token": None,
    }
    assert "hf_secret" not in repr(LocalOptions(token="hf_secret"))


@pytest.mark.parametrize(
    ("gib", "expected"),
    [(8, GPU_BATCH_TOKENS), (24, 32768), (40, 65536), (80, MAX_GPU_BATCH_TOKENS), (141, 131072)],
)
def test_cuda_budget_grows_with_the_cards_memory(gib: int, expected: int) -> None:
    assert default_batch_tokens(CUDA, memory_bytes=gib * 2**30) == expected


def test_budget_without_a_readable_card_is_the_gpu_floor_and_cpu_stays_small() -> None:
    assert default_batch_tokens(torch.device("cpu")) == CPU_BATCH_TOKENS
    assert default_batch_tokens(torch.device("mps")) == GPU_BATCH_TOKENS
    if not torch.cuda.is_available():
        assert default_batch_tokens(CUDA) == GPU_BATCH_TOKENS


@pytest.fixture(scope="module")
def scorers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scorers")
    return {
        "cross": make_modernbert_checkpoint(root / "cross"),
        "colbert": make_colbert_checkpoint(root / "colbert"),
        "matryoshka": make_matryoshka_checkpoint(root / "mm"),
    }


def _build(kind: str, directory: Path, **options: Any) -> LocalScorer:
    cls = {"cross": CrossEncoderScorer, "colbert": ColBERTScorer, "matryoshka": MatryoshkaScorer}
    scorer: LocalScorer = cls[kind](directory, device="cpu", **options)
    return scorer


@pytest.mark.parametrize("kind", ["cross", "colbert", "matryoshka"])
def test_every_local_scorer_reports_its_token_budget(kind: str, scorers: dict[str, Path]) -> None:
    default = _build(kind, scorers[kind])
    assert isinstance(default, LocalScorer)
    assert default.batch_tokens == default_batch_tokens(torch.device("cpu")) == 2048
    assert _build(kind, scorers[kind], batch_tokens=777).batch_tokens == 777
    with pytest.raises(InvalidInputError, match="batch_tokens"):
        _build(kind, scorers[kind], batch_tokens=0)


@pytest.mark.parametrize("kind", ["cross", "colbert", "matryoshka"])
def test_every_local_scorer_shares_weights_unless_cache_false(
    kind: str, scorers: dict[str, Path]
) -> None:
    a, b = _build(kind, scorers[kind]), _build(kind, scorers[kind])
    private = _build(kind, scorers[kind], cache=False)
    weights = {"cross": "classifier", "matryoshka": "classifier", "colbert": "trunk"}[kind]
    assert getattr(a, weights) is getattr(b, weights)
    assert getattr(private, weights) is not getattr(a, weights)


def test_reprs_name_the_model_and_its_settings(scorers: dict[str, Path]) -> None:
    cross = _build("cross", scorers["cross"], max_length=64)
    assert repr(cross) == (
        f"CrossEncoderScorer(model={str(scorers['cross'])!r}, device='cpu', max_length=64)"
    )
    mm = _build("matryoshka", scorers["matryoshka"])
    assert repr(mm).startswith(f"MatryoshkaScorer(model={str(scorers['matryoshka'])!r}, layer=")
    colbert = _build("colbert", scorers["colbert"], reduce="mean")
    assert repr(colbert).endswith("reduce='mean')") and "query_length=" in repr(colbert)


def test_fill_mask_shares_weights_checks_options_and_pickles(tmp_path: Path) -> None:
    directory = make_modernbert_checkpoint(tmp_path / "mlm", head="mlm")
    first = FillMask(directory, device="cpu")
    assert FillMask(directory, device="cpu").model is first.model
    assert FillMask(directory, device="cpu", cache=False).model is not first.model
    twin = pickle.loads(pickle.dumps(first))
    assert twin.model is first.model and copy.deepcopy(first).mask_id == first.mask_id
    text = f"w1 w2 {first.mask_token} w4"
    assert twin.predict(text, top_k=3) == first.predict(text, top_k=3)
    with pytest.raises(UnknownOptionError, match="device"):
        FillMask(directory, devcie="cpu")  # type: ignore[call-arg]


def test_the_server_budget_is_the_local_scorers_own(scorers: dict[str, Path]) -> None:
    from rerank_plugins.cli import _parser
    from rerank_plugins.cli.serve import serve_options
    from rerank_plugins.serve.runner import build_server

    argv = ["serve", "-m", str(scorers["cross"]), "--device", "cpu"]
    app = build_server(serve_options(_parser().parse_args(argv)))
    scorer = app.state.engine.scorer
    assert scorer.batch_tokens == CPU_BATCH_TOKENS
    assert app.state.batcher.max_batch_tokens == scorer.batch_tokens
    app = build_server(serve_options(_parser().parse_args([*argv, "--batch-tokens", "999"])))
    assert app.state.engine.scorer.batch_tokens == app.state.batcher.max_batch_tokens == 999
