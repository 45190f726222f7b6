"""``rerank_plugins.langchain.CrossEncoder`` inside LangChain's own ``CrossEncoderReranker``."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.langchain import CrossEncoder, RerankCompressor
from rerank_plugins.testing import FunctionScorer
from tests.integrations.first_stage import MiniLMEmbeddings

PLANETS = [
    "Jupiter is the largest planet in the solar system.",
    "Paris is the capital of France.",
    "Mars is called the red planet.",
    "Saturn has the most visible rings of any planet.",
    "The Eiffel Tower is in Paris.",
]


def overlap(query: str, doc: str) -> float:
    return float(len(set(query.lower().split()) & set(doc.lower().rstrip(".").split())))


def test_cross_encoder_is_a_langchain_base_cross_encoder_scoring_pairs_in_order() -> None:
    encoder = CrossEncoder(scorer=FunctionScorer(overlap))
    assert isinstance(encoder, BaseCrossEncoder)
    pairs = [("red planet", PLANETS[2]), ("paris", PLANETS[1]), ("red planet", PLANETS[0])]
    assert encoder.score(pairs) == [overlap(q, d) for q, d in pairs]


def test_pairs_sharing_a_query_are_scored_in_one_call() -> None:
    scorer = FunctionScorer(overlap)
    CrossEncoder(scorer=scorer).score([("planet", d) for d in PLANETS])
    assert scorer.calls == 1


def test_a_malformed_pair_is_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        CrossEncoder(scorer=FunctionScorer(overlap)).score([("q", "d"), ("only one",)])  # type: ignore[list-item]
    assert info.value.indices == (1,)


def test_cross_encoder_reranker_in_a_contextual_compression_retriever(
    modernbert_dir: Path,
) -> None:
    store = InMemoryVectorStore(embedding=MiniLMEmbeddings())
    store.add_documents([Document(page_content=t, id=f"id-{i}") for i, t in enumerate(PLANETS)])
    base = store.as_retriever(search_kwargs={"k": 5})
    encoder = CrossEncoder(model=modernbert_dir, model_kwargs={"device": "cpu"})
    retriever = ContextualCompressionRetriever(
        base_compressor=CrossEncoderReranker(model=encoder, top_n=3), base_retriever=base
    )
    query = "Which planet is the largest?"
    out = retriever.invoke(query)

    # The same three documents, in the same order, as our own compressor on that model.
    candidates = base.invoke(query)
    ours = RerankCompressor(scorer=encoder.scorer, top_n=3).compress_documents(candidates, query)
    assert len(out) == 3
    assert [d.id for d in out] == [d.id for d in ours]
