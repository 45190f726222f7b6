"""The command line past the window (``--overflow chunk`` and its options,
``--max-tokens-per-doc``) and with cascades (``--exit-layer``/``--keep``, ``--cascade``)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from rerank_plugins import Cascade, InvalidInputError, rank
from rerank_plugins.cli.model_options import add_model_options, model_options
from rerank_plugins.loading import load_model
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.matryoshka import MatryoshkaScorer
from rerank_plugins.testing import make_matryoshka_checkpoint, random_text
from tests.cli_run import run

QUERY = "w1 w2"


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_matryoshka_checkpoint(tmp_path_factory.mktemp("mm") / "mmbert-2d")


def test_overflow_chunk_with_its_options(modernbert_dir: Path) -> None:
    docs = [random_text(random.Random(1), n) for n in (90, 4)]
    argv = ["rerank", QUERY, *docs, "--model", str(modernbert_dir), "--device", "cpu"]
    options = ["--max-length", "30", "--overflow", "chunk", "--chunk-tokens", "12"]
    options += ["--chunk-overlap", "2", "--aggregate", "top2", "--json"]
    code, out = run(argv + options)
    assert code == 0
    rows = {r["index"]: r for r in json.loads(out)}
    expected = CrossEncoderScorer(
        modernbert_dir,
        device="cpu",
        max_length=30,
        overflow="chunk",
        chunk_tokens=12,
        chunk_overlap=2,
        aggregate="top2",
    ).score(QUERY, docs)
    assert rows[0]["chunks"] == expected[0].chunks == 9 and "chunks" not in rows[1]
    assert [rows[i]["score"] for i in (0, 1)] == pytest.approx([s.value for s in expected])


def test_max_tokens_per_doc(modernbert_dir: Path) -> None:
    docs = ["w1 w2 w3 w4 w5", "w6"]
    argv = ["rerank", QUERY, *docs, "--model", str(modernbert_dir), "--device", "cpu"]
    code, out = run([*argv, "--max-tokens-per-doc", "2", "--json"])
    assert code == 0
    assert {r["index"]: r["truncated"] for r in json.loads(out)} == {0: True, 1: False}


def test_matryoshka_cascade(mm_dir: Path, docs: list[str]) -> None:
    argv = ["rerank", QUERY, *docs, "--model", str(mm_dir), "--device", "cpu", "--json"]
    code, out = run([*argv, "--exit-layer", "2", "--keep", "3"])
    assert code == 0
    rows = json.loads(out)
    expected = rank(MatryoshkaScorer(mm_dir, device="cpu", exit_layer=2, keep=3).score(QUERY, docs))
    assert [r["index"] for r in rows] == [r.index for r in expected]
    assert [r["stage"] for r in rows] == [1, 1, 1] + [0] * (len(docs) - 3)


def test_cascade_of_two_models(mm_dir: Path, modernbert_dir: Path, docs: list[str]) -> None:
    argv = ["rerank", QUERY, *docs, "--model", str(mm_dir), "--layer", "2", "--device", "cpu"]
    code, out = run([*argv, "--cascade", str(modernbert_dir), "--keep", "2", "--json"])
    assert code == 0
    expected = rank(
        Cascade(
            MatryoshkaScorer(mm_dir, device="cpu", layer=2),
            CrossEncoderScorer(modernbert_dir, device="cpu"),
            keep=2,
        ).score(QUERY, docs)
    )
    assert [r["index"] for r in json.loads(out)] == [r.index for r in expected]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_model_options(parser, defaults=True)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--keep", "3"],
        ["--exit-layer", "2"],
        ["--cascade", "other"],
        ["--cascade", "other", "--exit-layer", "2", "--keep", "3"],
        ["-m", "http://127.0.0.1:1", "--max-tokens-per-doc", "3"],
    ],
)
def test_incomplete_or_contradictory_cascades_are_refused(argv: list[str]) -> None:
    with pytest.raises(InvalidInputError):
        model_options(_parse(["-m", "local-dir", *argv]))


def test_load_model_builds_a_cascade(mm_dir: Path) -> None:
    options = model_options(
        _parse(["-m", str(mm_dir), "--layer", "2", "--cascade", str(mm_dir), "--keep", "4"])
    )
    scorer = load_model(str(mm_dir), {**options, "device": "cpu"})
    assert isinstance(scorer, Cascade) and scorer.keep == 4
    assert isinstance(scorer.first, MatryoshkaScorer) and scorer.first.layer == 2
    assert isinstance(scorer.second, MatryoshkaScorer) and scorer.second.layer == 8
