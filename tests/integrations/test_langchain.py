"""RerankCompressor: LangChain's document compressor over any scorer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from rerank_plugins import InvalidScoreError, Score, ScoringError
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.testing import FunctionScorer
from tests.integrations.first_stage import MiniLMEmbeddings

PLANETS = [
    "Jupiter is the largest planet in the solar system.",
    "Paris is the capital of France.",
    "Saturn has spectacular rings made of ice.",
    "The Eiffel Tower was finished in 1889.",
    "Mars is called the red planet because of iron oxide.",
    "Croissants are a French pastry.",
]


def overlap(query: str, doc: str) -> float:
    """Word overlap plus a tiny length term: deterministic, text-dependent scores."""
    q = set(query.lower().split())
    return len(q & set(doc.lower().rstrip(".").split())) + len(doc) * 1e-4


def make_docs() -> list[Document]:
    return [
        Document(page_content=t, metadata={"source": f"s{i}"}, id=f"id-{i}")
        for i, t in enumerate(PLANETS)
    ]


def test_documents_come_back_sorted_with_scores_and_ids() -> None:
    docs = make_docs()
    out = RerankCompressor(scorer=FunctionScorer(overlap), top_n=None).compress_documents(
        docs, "which planet is the largest planet"
    )
    expected = sorted(PLANETS, key=lambda t: -overlap("which planet is the largest planet", t))
    assert [d.page_content for d in out] == expected
    first = out[0]
    assert first.id == "id-0" and first.metadata["source"] == "s0"
    assert first.metadata["relevance_score"] == pytest.approx(
        overlap("which planet is the largest planet", PLANETS[0])
    )
    assert first.metadata["rerank_plugins"] == {
        "kind": "logit",
        "tokens": None,
        "truncated": False,
        "index": 0,
    }


def test_inputs_are_not_mutated() -> None:
    docs = make_docs()
    before = [d.model_dump() for d in docs]
    out = RerankCompressor(scorer=FunctionScorer(overlap), top_n=2).compress_documents(
        docs, "planet"
    )
    assert [d.model_dump() for d in docs] == before
    assert all(o is not d for o in out for d in docs)


def test_top_n_and_threshold() -> None:
    scorer = FunctionScorer(overlap)
    out = RerankCompressor(scorer=scorer, top_n=2).compress_documents(make_docs(), "planet red")
    assert [d.id for d in out] == ["id-4", "id-0"]
    out = RerankCompressor(scorer=scorer, score_threshold=1.0).compress_documents(
        make_docs(), "french"
    )
    assert [d.id for d in out] == ["id-5"]


def test_empty_input_does_not_call_the_scorer() -> None:
    scorer = FunctionScorer(overlap)
    assert RerankCompressor(scorer=scorer).compress_documents([], "q") == []
    assert scorer.calls == 0


async def test_async_path_awaits_ascore_and_matches_sync() -> None:
    class AsyncOnly(FunctionScorer):
        def score(self, query: str, documents: object) -> list[Score]:  # type: ignore[override]
            raise AssertionError("the async path must not call score()")

        async def ascore(self, query: str, documents: object) -> list[Score]:  # type: ignore[override]
            return FunctionScorer.score(self, query, documents)  # type: ignore[arg-type]

    sync = RerankCompressor(scorer=FunctionScorer(overlap), top_n=3).compress_documents(
        make_docs(), "planet"
    )
    out = await RerankCompressor(scorer=AsyncOnly(overlap), top_n=3).acompress_documents(
        make_docs(), "planet"
    )
    assert out == sync


@pytest.mark.parametrize("top_n", [0, -3])
def test_non_positive_top_n_is_rejected(top_n: int) -> None:
    with pytest.raises(ValueError):
        RerankCompressor(scorer=FunctionScorer(overlap), top_n=top_n)


def test_nan_from_the_backend_raises_a_typed_error() -> None:
    scorer = FunctionScorer(lambda q, d: math.nan if "Paris" in d else 1.0)
    with pytest.raises(InvalidScoreError) as info:
        RerankCompressor(scorer=scorer).compress_documents(make_docs(), "planet")
    assert info.value.indices == (1,)


def test_a_scorer_that_loses_documents_raises() -> None:
    class Lossy(FunctionScorer):
        def score(self, query: str, documents: object) -> list[Score]:  # type: ignore[override]
            return FunctionScorer.score(self, query, documents)[:-1]  # type: ignore[arg-type]

    with pytest.raises(ScoringError):
        RerankCompressor(scorer=Lossy(overlap)).compress_documents(make_docs(), "planet")


def test_empty_query_is_rejected() -> None:
    with pytest.raises(InvalidInputError):
        RerankCompressor(scorer=FunctionScorer(overlap)).compress_documents(make_docs(), " ")


def test_scorer_and_model_together_are_rejected() -> None:
    with pytest.raises(InvalidInputError):
        RerankCompressor(scorer=FunctionScorer(overlap), model="some/model")


def test_model_spec_loads_a_local_checkpoint(modernbert_dir: Path) -> None:
    compressor = RerankCompressor(
        model=str(modernbert_dir), model_kwargs={"device": "cpu"}, top_n=2
    )
    out = compressor.compress_documents(make_docs(), "w1 w2")
    assert len(out) == 2
    assert out[0].metadata["relevance_score"] >= out[1].metadata["relevance_score"]
    assert out[0].metadata["rerank_plugins"]["kind"] == "probability"
    assert out[0].metadata["rerank_plugins"]["tokens"] > 0


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_contextual_compression_retriever_returns_the_reranked_top_n(
    modernbert_dir: Path,
) -> None:
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents(make_docs())
    base = store.as_retriever(search_kwargs={"k": 4})
    compressor = RerankCompressor(model=modernbert_dir, model_kwargs={"device": "cpu"}, top_n=2)
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=base)
    query = "Which planet is the largest?"

    candidates = base.invoke(query)
    assert "id-0" in [d.id for d in candidates]  # the real first stage found the answer
    out = retriever.invoke(query)

    values = [s.value for s in compressor.scorer.score(query, [d.page_content for d in candidates])]
    best = sorted(range(len(values)), key=lambda i: -values[i])[:2]
    assert [d.id for d in out] == [candidates[i].id for i in best]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([values[i] for i in best])
