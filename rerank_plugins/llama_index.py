"""LlamaIndex node postprocessor: rerank retrieved nodes with any scorer.

::

    from rerank_plugins.llama_index import RerankPostprocessor
    engine = index.as_query_engine(node_postprocessors=[RerankPostprocessor(top_n=3)])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rerank_plugins._imports import require

require("llama_index.core")

from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import ConfigDict, Field, PositiveInt, model_validator

from rerank_plugins._options import check_fields
from rerank_plugins.batching import BatchingScorer
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import scorer_from
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import Score, Scorer, ascore_groups, score_groups, with_instruction

__all__ = ["RerankPostprocessor"]

dispatcher = get_dispatcher(__name__)

METADATA_KEY = "rerank_plugins"


class RerankPostprocessor(BaseNodePostprocessor):
    """Reorders nodes by relevance to the query and keeps the best ``top_n``.

    Returns new ``NodeWithScore`` objects with ``.score`` set to the relevance, most
    relevant first; the input list and nodes are not modified. With
    ``keep_retrieval_score`` the first-stage score is kept in the node's
    ``metadata["retrieval_score"]`` (on a copy of the node). Emits ``ReRankStartEvent`` /
    ``ReRankEndEvent`` and the ``RERANKING`` callback event on every call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    scorer: Any = Field(default=None, exclude=True, description="A rerank_plugins Scorer.")
    model: str | None = Field(
        default=None, description="Hub id, local directory or http(s) endpoint URL."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Options for load_scorer (device, max_length, ...)."
    )
    instruction: str | None = Field(
        default=None,
        description="Decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2): the task "
        "instruction, passed with every call in place of the model's default; a scorer "
        "that takes none refuses it (InvalidInputError).",
    )
    batching: bool = Field(
        default=False,
        description="Merge concurrent calls into shared forwards (a BatchingScorer); off "
        "by default: a lone caller gains nothing from it.",
    )
    # The default is the one of LlamaIndex's SentenceTransformerRerank and CohereRerank
    # (README, "Defaults"); None keeps every node, reordered.
    top_n: PositiveInt | None = Field(
        default=2, description="How many nodes to keep (None: all, reordered)."
    )
    score_threshold: float | None = Field(
        default=None, description="Drop nodes scoring below this value."
    )
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the first-stage score in metadata['retrieval_score']."
    )
    metadata_mode: MetadataMode = Field(
        default=MetadataMode.EMBED, description="Which metadata the scored text includes."
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_paths(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("model"), Path):
            values = {**values, "model": str(values["model"])}
        return values

    def __init__(self, **data: Any) -> None:
        # Unknown fields are refused (a silently ignored top_k= or model_name= returns
        # every document, or loads the default model instead of the caller's).
        check_fields(type(self).__name__, data, type(self).model_fields)
        super().__init__(**data)
        # Loaded after field validation so that loading errors keep their own type.
        self.scorer = scorer_from(self.scorer, self.model, self.model_kwargs)
        if self.batching and not isinstance(self.scorer, BatchingScorer):
            self.scorer = BatchingScorer(self.scorer)
        self._instructed()  # refuse an instruction the scorer cannot take, early

    def _instructed(self) -> Scorer:
        """The scorer with ``instruction`` bound into its calls (itself without one)."""
        return with_instruction(
            self.scorer, self.instruction, option="RerankPostprocessor(instruction=...)"
        )

    @classmethod
    def class_name(cls) -> str:
        return "RerankPostprocessor"

    @property
    def _model_name(self) -> str:
        return self.model or type(self.scorer).__name__

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts = self._begin(nodes, query_bundle)
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._start_payload(nodes, query)
        ) as event:
            (scores,) = score_groups(self._instructed(), [(query, texts)]) if texts else ([],)
            new_nodes = self._finish(nodes, scores)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query, texts = self._begin(nodes, query_bundle)
        with self.callback_manager.event(
            CBEventType.RERANKING, payload=self._start_payload(nodes, query)
        ) as event:
            (scores,) = (
                await ascore_groups(self._instructed(), [(query, texts)]) if texts else ([],)
            )
            new_nodes = self._finish(nodes, scores)
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes

    def _begin(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None
    ) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise InvalidInputError("RerankPostprocessor needs the query (query_bundle)")
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle,
                nodes=nodes,
                top_n=self.top_n or len(nodes),
                model_name=self._model_name,
            )
        )
        texts = [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes]
        return query_bundle.query_str, texts

    def _start_payload(self, nodes: list[NodeWithScore], query: str) -> dict[str, Any]:
        return {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self._model_name,
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: self.top_n,
        }

    def _finish(self, nodes: list[NodeWithScore], scores: list[Score]) -> list[NodeWithScore]:
        ranked = rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)
        return [self._rescored(nodes[r.index], r) for r in ranked]

    def _rescored(self, original: NodeWithScore, ranked: Ranked) -> NodeWithScore:
        score = ranked.score
        metadata = {
            **original.node.metadata,
            METADATA_KEY: {
                "kind": score.kind,
                "tokens": score.tokens,
                "truncated": score.truncated,
                "index": ranked.index,
            },
        }
        if self.keep_retrieval_score:
            metadata["retrieval_score"] = original.score
        # The node is copied so that its metadata can be annotated without touching the
        # caller's object; the metadata keys we add stay out of the text the LLM sees.
        excluded = [METADATA_KEY, "retrieval_score"]
        node = original.node.model_copy(
            update={
                "metadata": metadata,
                "excluded_llm_metadata_keys": [
                    *original.node.excluded_llm_metadata_keys,
                    *(k for k in excluded if k not in original.node.excluded_llm_metadata_keys),
                ],
                "excluded_embed_metadata_keys": [
                    *original.node.excluded_embed_metadata_keys,
                    *(k for k in excluded if k not in original.node.excluded_embed_metadata_keys),
                ],
            }
        )
        return NodeWithScore(node=node, score=score.value)
