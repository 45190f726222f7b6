"""A decoder reranker in both framework adapters, its instruction passed through
``model_kwargs`` (to ``load_scorer``) or the adapters' own ``instruction`` field (per call)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.scoring import Score, takes_instruction
from rerank_plugins.testing import FunctionScorer, make_qwen3_reranker_checkpoint

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


# --- the adapters' own instruction field -------------------------------------------------


@pytest.fixture(scope="module")
def decoder(qwen3_dir: Path) -> DecoderScorer:
    return DecoderScorer(qwen3_dir, device="cpu")


def per_call(decoder: DecoderScorer, instruction: str | None) -> dict[str, float]:
    scores = decoder.score(QUERY, TEXTS, instruction=instruction)
    return {t: s.value for t, s in zip(TEXTS, scores, strict=True)}


def nodes() -> list[NodeWithScore]:
    return [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("batching", [False, True])
async def test_compressor_instruction_equals_the_scorers_per_call_instruction(
    decoder: DecoderScorer, batching: bool
) -> None:
    compressor = RerankCompressor(
        scorer=decoder, instruction=INSTRUCTION, top_n=None, batching=batching
    )
    docs = [Document(page_content=t) for t in TEXTS]
    want = per_call(decoder, INSTRUCTION)
    assert want != pytest.approx(per_call(decoder, None))  # the instruction matters
    sync = compressor.compress_documents(docs, QUERY)
    asynced = await compressor.acompress_documents(docs, QUERY)
    for out in (sync, asynced):
        assert {d.page_content: d.metadata["relevance_score"] for d in out} == pytest.approx(want)
    # The scorer's own default instruction is untouched by the adapter's.
    assert decoder.instruction is None
    assert per_call(decoder, None) == pytest.approx(
        {
            d.page_content: d.metadata["relevance_score"]
            for d in RerankCompressor(scorer=decoder, top_n=None).compress_documents(docs, QUERY)
        }
    )


@pytest.mark.parametrize("batching", [False, True])
async def test_postprocessor_instruction_equals_the_scorers_per_call_instruction(
    decoder: DecoderScorer, batching: bool
) -> None:
    post = RerankPostprocessor(
        scorer=decoder, instruction=INSTRUCTION, top_n=None, batching=batching
    )
    want = per_call(decoder, INSTRUCTION)
    assert want != pytest.approx(per_call(decoder, None))
    bundle = QueryBundle(QUERY)
    sync = post.postprocess_nodes(nodes(), query_bundle=bundle)
    asynced = await post.apostprocess_nodes(nodes(), query_bundle=bundle)
    for out in (sync, asynced):
        assert {n.node.get_content(): n.score for n in out} == pytest.approx(want)


def test_adapter_instruction_overrides_the_one_in_model_kwargs(qwen3_dir: Path) -> None:
    compressor = RerankCompressor(
        model=str(qwen3_dir),
        model_kwargs={"device": "cpu", "instruction": "Something else entirely"},
        instruction=INSTRUCTION,
        top_n=None,
    )
    out = compressor.compress_documents([Document(page_content=t) for t in TEXTS], QUERY)
    want = expected(qwen3_dir, INSTRUCTION)
    assert {d.page_content: d.metadata["relevance_score"] for d in out} == pytest.approx(want)


@pytest.mark.parametrize("batching", [False, True])
def test_a_scorer_without_instructions_refuses_the_option(batching: bool) -> None:
    scorer = FunctionScorer(lambda q, d: float(len(d)))
    with pytest.raises(InvalidInputError, match=r"RerankCompressor\(instruction=...\)"):
        RerankCompressor(scorer=scorer, instruction=INSTRUCTION, batching=batching)
    with pytest.raises(InvalidInputError, match=r"RerankPostprocessor\(instruction=...\)"):
        RerankPostprocessor(scorer=scorer, instruction=INSTRUCTION, batching=batching)


async def test_an_instruction_set_after_construction_is_refused_sync_and_async() -> None:
    scorer = FunctionScorer(lambda q, d: float(len(d)))
    compressor = RerankCompressor(scorer=scorer)
    post = RerankPostprocessor(scorer=scorer)
    compressor.instruction = INSTRUCTION
    post.instruction = INSTRUCTION
    docs = [Document(page_content=t) for t in TEXTS]
    bundle = QueryBundle(QUERY)
    with pytest.raises(InvalidInputError, match="takes no instruction"):
        compressor.compress_documents(docs, QUERY)
    with pytest.raises(InvalidInputError, match="takes no instruction"):
        await compressor.acompress_documents(docs, QUERY)
    with pytest.raises(InvalidInputError, match="takes no instruction"):
        post.postprocess_nodes(nodes(), query_bundle=bundle)
    with pytest.raises(InvalidInputError, match="takes no instruction"):
        await post.apostprocess_nodes(nodes(), query_bundle=bundle)
    assert scorer.calls == 0  # refused before any scoring


def test_takes_instruction_is_declared_by_decoders_and_read_from_signatures(
    decoder: DecoderScorer,
) -> None:
    assert DecoderScorer.takes_instruction is True
    assert takes_instruction(decoder)
    assert not takes_instruction(FunctionScorer(lambda q, d: 0.0))

    class Signed(FunctionScorer):
        def score(
            self, query: str, documents: Sequence[str], *, instruction: str | None = None
        ) -> list[Score]:
            return super().score(query, documents)

    assert takes_instruction(Signed(lambda q, d: 0.0))
