"""``RemoteScorer(instruction=...)`` against the real thing: ``rerank-plugins serve``'s app
over a tiny Qwen3-Reranker, under uvicorn on 127.0.0.1. The remote scores with an
instruction are the local decoder's with that instruction, in the Cohere and TEI shapes,
sync and async, per scorer and per call, and through both adapters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerank_plugins import load_scorer
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.serve import create_app
from rerank_plugins.testing import make_qwen3_reranker_checkpoint

from .conftest import serving

DOCS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9", "w10", ".,; w1", "日本語 w5"]
QUERY = "w1 w5"
INSTRUCTION = "Find documents that share a word with the query"
TOLERANCE = 1e-5  # JSON floats round-trip exactly; batches of other shapes differ in noise


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> DecoderScorer:
    directory = make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3")
    return DecoderScorer(directory, device="cpu")


@pytest.fixture(scope="module")
def url(decoder: DecoderScorer) -> Iterator[str]:
    with serving(create_app(decoder, model_name="qwen3", warmup=False)) as base:
        yield base


def local(decoder: DecoderScorer, instruction: str | None) -> list[float]:
    return [s.value for s in decoder.score(QUERY, DOCS, instruction=instruction)]


@pytest.mark.parametrize("dialect", ["cohere", "tei"])
async def test_remote_scores_with_an_instruction_are_the_local_decoders(
    decoder: DecoderScorer, url: str, dialect: str
) -> None:
    want, default = local(decoder, INSTRUCTION), local(decoder, None)
    assert want != pytest.approx(default, abs=1e-4)  # the instruction changes the scores
    with RemoteScorer(url, dialect=dialect, instruction=INSTRUCTION) as remote:  # type: ignore[arg-type]
        got = [s.value for s in remote.score(QUERY, DOCS)]
        assert got == pytest.approx(want, abs=TOLERANCE)
        agot = [s.value for s in await remote.ascore(QUERY, DOCS)]
        assert agot == pytest.approx(want, abs=TOLERANCE)
        await remote.aclose()
    with RemoteScorer(url, dialect=dialect) as plain:  # type: ignore[arg-type]
        assert [s.value for s in plain.score(QUERY, DOCS)] == pytest.approx(default, abs=TOLERANCE)
        # Per call: this call's instruction, not the scorer's (None here).
        told = plain.score(QUERY, DOCS, instruction=INSTRUCTION)
        assert [s.value for s in told] == pytest.approx(want, abs=TOLERANCE)


def test_load_scorer_passes_the_instruction_to_the_endpoint(
    decoder: DecoderScorer, url: str
) -> None:
    other = "Judge the passage by its numbers"
    remote = load_scorer(url, instruction=other)
    assert isinstance(remote, RemoteScorer) and remote.instruction == other
    with remote:
        got = [s.value for s in remote.score(QUERY, DOCS)]
    assert got == pytest.approx(local(decoder, other), abs=TOLERANCE)


def test_both_adapters_pass_their_instruction_to_the_endpoint(
    decoder: DecoderScorer, url: str
) -> None:
    want = dict(zip(DOCS, local(decoder, INSTRUCTION), strict=True))
    with RemoteScorer(url) as remote:
        compressor = RerankCompressor(scorer=remote, instruction=INSTRUCTION, top_n=len(DOCS))
        out = compressor.compress_documents([Document(page_content=t) for t in DOCS], QUERY)
        got = {d.page_content: d.metadata["relevance_score"] for d in out}
        assert got == pytest.approx(want, abs=TOLERANCE)
        post = RerankPostprocessor(scorer=remote, instruction=INSTRUCTION, top_n=len(DOCS))
        nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(DOCS)]
        ranked = post.postprocess_nodes(nodes, query_bundle=QueryBundle(QUERY))
        assert {n.node.get_content(): n.score for n in ranked} == pytest.approx(want, abs=TOLERANCE)
