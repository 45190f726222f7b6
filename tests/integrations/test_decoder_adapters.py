"""A decoder reranker in both framework adapters, its instruction passed through
``model_kwargs`` (the way every scorer option reaches ``load_scorer``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.testing import make_qwen3_reranker_checkpoint

TEXTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10"]
QUERY = "w1 w5"
INSTRUCTION = "Find documents that share a word with the query"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3")


def expected(qwen3_dir: Path, instruction: str | None) -> dict[str, float]:
    scorer = DecoderScorer(qwen3_dir, device="cpu", instruction=instruction)
    return {t: s.value for t, s in zip(TEXTS, scorer.score(QUERY, TEXTS), strict=True)}


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_langchain_compressor_runs_a_decoder_with_its_instruction(
    qwen3_dir: Path, instruction: str | None
) -> None:
    kwargs = (
        {"device": "cpu"} if instruction is None else {"device": "cpu", "instruction": instruction}
    )
    compressor = RerankCompressor(model=str(qwen3_dir), model_kwargs=kwargs, top_n=len(TEXTS))
    out = compressor.compress_documents([Document(page_content=t) for t in TEXTS], QUERY)
    want = expected(qwen3_dir, instruction)
    assert {d.page_content: d.metadata["relevance_score"] for d in out} == pytest.approx(want)
    values = [d.metadata["relevance_score"] for d in out]
    assert values == sorted(values, reverse=True)


def test_llama_index_postprocessor_runs_a_decoder_with_its_instruction(qwen3_dir: Path) -> None:
    post = RerankPostprocessor(
        model=str(qwen3_dir),
        model_kwargs={"device": "cpu", "instruction": INSTRUCTION},
        top_n=len(TEXTS),
    )
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(TEXTS)]
    out = post.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
    want = expected(qwen3_dir, INSTRUCTION)
    assert {n.node.get_content(): n.score for n in out} == pytest.approx(want)
    assert expected(qwen3_dir, None) != pytest.approx(want)  # the instruction mattered
