"""LangChain document compressor: rerank retrieved ``Document``s with any scorer.

::

    from rerank_plugins.langchain import RerankCompressor
    compressor = RerankCompressor(model="Alibaba-NLP/gte-reranker-modernbert-base", top_n=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require

require("langchain_core")

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PositiveInt, model_validator

from rerank_plugins.loading import scorer_from
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import check_scores

if TYPE_CHECKING:
    from rerank_plugins.scoring import Scorer

__all__ = ["RerankCompressor"]

METADATA_KEY = "rerank_plugins"
"""Namespaced metadata: ``{"kind", "tokens", "truncated", "index"}`` of each result."""


class RerankCompressor(BaseDocumentCompressor):
    """Reorders documents by relevance to the query and keeps the best ``top_n``.

    Returns copies of the input documents (ids and metadata kept, inputs untouched) with
    ``metadata["relevance_score"]`` and ``metadata["rerank_plugins"]`` set, most relevant
    first. Give a ``scorer`` or a ``model`` spec (hub id, directory or endpoint URL) with
    ``model_kwargs``; with neither, the default local model is loaded.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    scorer: Any = Field(default=None, exclude=True, description="A rerank_plugins Scorer.")
    model: str | None = Field(
        default=None, description="Hub id, local directory or http(s) endpoint URL."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Options for load_scorer (device, max_length, ...)."
    )
    top_n: PositiveInt | None = Field(
        default=None, description="How many documents to keep (None: all, reordered)."
    )
    score_threshold: float | None = Field(
        default=None, description="Drop documents scoring below this value."
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_paths(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("model"), Path):
            values = {**values, "model": str(values["model"])}
        return values

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Loaded after field validation so that loading errors keep their own type.
        self.scorer = scorer_from(self.scorer, self.model, self.model_kwargs)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        scorer: Scorer = self.scorer
        texts = [d.page_content for d in documents]
        scores = check_scores(scorer.score(query, texts), len(texts))
        ranked = rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)
        return self._annotate(documents, ranked)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        scorer: Scorer = self.scorer
        texts = [d.page_content for d in documents]
        scores = check_scores(await scorer.ascore(query, texts), len(texts))
        ranked = rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)
        return self._annotate(documents, ranked)

    @staticmethod
    def _annotate(documents: Sequence[Document], ranked: list[Ranked]) -> list[Document]:
        out = []
        for index, score in ranked:
            doc = documents[index]
            metadata = {
                **doc.metadata,
                "relevance_score": score.value,
                METADATA_KEY: {
                    "kind": score.kind,
                    "tokens": score.tokens,
                    "truncated": score.truncated,
                    "index": index,
                },
            }
            out.append(doc.model_copy(update={"metadata": metadata}))
        return out
