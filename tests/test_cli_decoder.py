"""``rerank-plugins rerank --instruction`` on a decoder reranker checkpoint, and sent to an
endpoint in its dialect's field."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.testing import make_qwen3_reranker_checkpoint
from rerank_plugins.testing.fake_server import FakeRerankServer, fake_probability, serve
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


@pytest.mark.parametrize(("dialect", "field"), [("cohere", "instruction"), ("sglang", "instruct")])
def test_an_endpoint_gets_the_instruction_in_its_dialects_field(dialect: str, field: str) -> None:
    fake = FakeRerankServer(dialect)
    httpd = serve(fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        argv = ["rerank", "w1 w2", *DOCS, "-m", url, "--dialect", dialect, "--json"]
        code, out = run([*argv, "--instruction", INSTRUCTION])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert code == 0
    (body,) = fake.requests
    assert body[field] == INSTRUCTION
    got = {r["index"]: r["score"] for r in json.loads(out)}
    want = [fake_probability(f"{INSTRUCTION}\nw1 w2", d) for d in DOCS]
    assert [got[i] for i in range(len(DOCS))] == pytest.approx(want)


def test_instruction_is_refused_for_a_dialect_without_a_field(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["rerank", "q", "d", "-m", "http://127.0.0.1:8000", "--dialect", "vllm-score"]
    code, _ = run([*argv, "--instruction", "x"])
    assert code == 2
    assert "'vllm-score' API has no instruction field" in capsys.readouterr().err
