"""Feedback on long jobs: an opt-in tqdm bar and INFO throughput logs; off in adapters."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from rerank_plugins import CrossEncoderScorer, InvalidInputError

QUERY = "w1 w2"


def many(docs: list[str]) -> list[str]:
    return docs * 3


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_show_progress_draws_a_bar_on_stderr(
    modernbert_dir: Path, docs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", batch_tokens=64, show_progress=True)
    scorer.score(QUERY, many(docs))
    err = capsys.readouterr().err
    # tqdm redraws at most every 0.1 s, so which percentages show depends on speed.
    assert re.search(r"rerank: +\d+%\|", err) and "tok/s" in err


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_no_bar_by_default_nor_in_auto_mode_off_a_terminal(
    modernbert_dir: Path, docs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for show in (False, None):  # None: only when stderr is a terminal (it is not here)
        scorer = CrossEncoderScorer(
            modernbert_dir, device="cpu", batch_tokens=64, show_progress=show
        )
        scorer.score(QUERY, many(docs))
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_throughput_is_logged_at_info(
    modernbert_dir: Path, docs: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", batch_tokens=64)
    with caplog.at_level(logging.INFO, logger="rerank_plugins.local.progress"):
        scorer.score(QUERY, many(docs))
    [record] = [r for r in caplog.records if r.name == "rerank_plugins.local.progress"]
    assert record.levelno == logging.INFO
    assert "batches/s" in record.getMessage() and "tokens/s" in record.getMessage()


def test_adapters_never_turn_the_bar_on(modernbert_dir: Path) -> None:
    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    for cls in (RerankCompressor, RerankPostprocessor):
        adapter = cls(model=str(modernbert_dir), model_kwargs={"device": "cpu"})
        assert adapter.scorer.show_progress is False


def test_show_progress_must_be_a_bool_or_none(modernbert_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="show_progress"):
        CrossEncoderScorer(modernbert_dir, device="cpu", show_progress="yes")  # type: ignore[arg-type]
