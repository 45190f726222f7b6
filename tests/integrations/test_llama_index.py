"""RerankPostprocessor: LlamaIndex's node postprocessor over any scorer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.llms.mock import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from rerank_plugins import InvalidInputError, InvalidScoreError
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.testing import FunctionScorer
from tests.integrations.first_stage import MiniLMEmbedding
from tests.integrations.test_langchain import PLANETS, overlap


def make_nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"n{i}", metadata={"source": f"s{i}"}), score=0.1 * i
        )
        for i, t in enumerate(PLANETS)
    ]


class Recorder(BaseEventHandler):
    events: list[BaseEvent]

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture()
def recorder() -> Any:
    handler = Recorder(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def rerank_events(recorder: Recorder) -> list[str]:
    return [e.class_name() for e in recorder.events if "ReRank" in e.class_name()]


def test_nodes_come_back_sorted_as_new_objects(recorder: Recorder) -> None:
    nodes = make_nodes()
    before = [(n.node.model_dump(), n.score) for n in nodes]
    post = RerankPostprocessor(scorer=FunctionScorer(overlap), top_n=2)
    out = post.postprocess_nodes(nodes, query_str="the red planet mars")
    assert [n.node.node_id for n in out] == ["n4", "n0"]
    text = nodes[4].node.get_content(metadata_mode=MetadataMode.EMBED)  # metadata included
    assert "s4" in text
    assert out[0].score == pytest.approx(overlap("the red planet mars", text))
    assert out[0].node.metadata["source"] == "s4"
    assert out[0].node.metadata["rerank_plugins"]["index"] == 4
    assert "retrieval_score" not in out[0].node.metadata
    assert [(n.node.model_dump(), n.score) for n in nodes] == before  # inputs untouched
    assert all(o is not n and o.node is not n.node for o in out for n in nodes)
    assert rerank_events(recorder) == ["ReRankStartEvent", "ReRankEndEvent"]


def test_metadata_we_add_stays_out_of_the_text() -> None:
    out = RerankPostprocessor(scorer=FunctionScorer(overlap), keep_retrieval_score=True)
    node = out.postprocess_nodes(make_nodes(), query_str="planet")[0].node
    assert "rerank_plugins" not in node.get_content(metadata_mode=MetadataMode.LLM)
    assert "retrieval_score" not in node.get_content(metadata_mode=MetadataMode.EMBED)


def test_keep_retrieval_score() -> None:
    post = RerankPostprocessor(scorer=FunctionScorer(overlap), keep_retrieval_score=True)
    out = post.postprocess_nodes(make_nodes(), query_str="planet")
    for n in out:
        original = int(n.node.node_id[1:])
        assert n.node.metadata["retrieval_score"] == pytest.approx(0.1 * original)


def test_empty_input_still_emits_events(recorder: Recorder) -> None:
    debug = LlamaDebugHandler()
    scorer = FunctionScorer(overlap)
    post = RerankPostprocessor(scorer=scorer, callback_manager=CallbackManager([debug]))
    assert post.postprocess_nodes([], query_str="planet") == []
    assert scorer.calls == 0
    assert rerank_events(recorder) == ["ReRankStartEvent", "ReRankEndEvent"]
    assert len(debug.get_event_pairs(CBEventType.RERANKING)) == 1


async def test_async_path_is_native_and_matches_sync(recorder: Recorder) -> None:
    class AsyncOnly(FunctionScorer):
        def score(self, query: str, documents: Any) -> Any:
            raise AssertionError("the async path must not call score()")

        async def ascore(self, query: str, documents: Any) -> Any:
            return FunctionScorer.score(self, query, documents)

    sync = RerankPostprocessor(scorer=FunctionScorer(overlap), top_n=3).postprocess_nodes(
        make_nodes(), query_str="planet"
    )
    out = await RerankPostprocessor(scorer=AsyncOnly(overlap), top_n=3).apostprocess_nodes(
        make_nodes(), query_str="planet"
    )
    assert [(n.node.node_id, n.score) for n in out] == [(n.node.node_id, n.score) for n in sync]
    assert rerank_events(recorder) == ["ReRankStartEvent", "ReRankEndEvent"] * 2


def test_missing_query_is_a_typed_error() -> None:
    with pytest.raises(InvalidInputError):
        RerankPostprocessor(scorer=FunctionScorer(overlap)).postprocess_nodes(make_nodes())


def test_nan_from_the_backend_raises_a_typed_error() -> None:
    scorer = FunctionScorer(lambda q, d: math.nan if "Saturn" in d else 0.0)
    with pytest.raises(InvalidScoreError) as info:
        RerankPostprocessor(scorer=scorer).postprocess_nodes(make_nodes(), query_str="planet")
    assert info.value.indices == (2,)


def test_non_positive_top_n_is_rejected() -> None:
    with pytest.raises(ValueError):
        RerankPostprocessor(scorer=FunctionScorer(overlap), top_n=0)


def test_query_engine_with_the_postprocessor_returns_reranked_nodes(
    modernbert_dir: Path,
) -> None:
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(PLANETS)]
    index = VectorStoreIndex(nodes, embed_model=MiniLMEmbedding())
    post = RerankPostprocessor(model=modernbert_dir, model_kwargs={"device": "cpu"}, top_n=2)
    engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=4, node_postprocessors=[post])
    query = "Which planet is the largest?"
    candidates = index.as_retriever(similarity_top_k=4).retrieve(QueryBundle(query))
    assert "n0" in [c.node.node_id for c in candidates]  # the real first stage found it

    response = engine.query(query)

    texts = [c.node.get_content(metadata_mode="embed") for c in candidates]  # type: ignore[arg-type]
    values = [s.value for s in post.scorer.score(query, texts)]
    best = sorted(range(len(values)), key=lambda i: -values[i])[:2]
    assert [n.node.node_id for n in response.source_nodes] == [
        candidates[i].node.node_id for i in best
    ]
    assert [n.score for n in response.source_nodes] == pytest.approx([values[i] for i in best])
