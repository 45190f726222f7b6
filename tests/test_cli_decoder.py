"""``rerank-plugins rerank --instruction`` on a decoder reranker checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.testing import make_qwen3_reranker_checkpoint
from tests.cli_run import DOCS, run

INSTRUCTION = "Find documents that share a word with the query"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3")


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_rerank_passes_the_instruction_to_a_decoder(
    qwen3_dir: Path, instruction: str | None
) -> None:
    extra = [] if instruction is None else ["--instruction", instruction]
    code, out = run(["rerank", "w1 w2", *DOCS, "--model", str(qwen3_dir), "--json", *extra])
    assert code == 0
    got = {r["index"]: r["score"] for r in json.loads(out)}
    scorer = DecoderScorer(qwen3_dir, device="cpu", instruction=instruction)
    want = [s.value for s in scorer.score("w1 w2", DOCS)]
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(want, abs=1e-6)


def test_instruction_is_refused_for_an_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(["rerank", "q", "d", "-m", "http://127.0.0.1:8000", "--instruction", "x"])
    assert code == 2
    assert "--instruction only applies to local models" in capsys.readouterr().err
