"""LangChain document compressor: rerank retrieved ``Document``s with any scorer.

::

    from rerank_plugins.langchain import RerankCompressor
    compressor = RerankCompressor(model="Alibaba-NLP/gte-reranker-modernbert-base", top_n=3)

``CrossEncoder`` is LangChain's ``BaseCrossEncoder`` over any scorer, for code built on
``CrossEncoderReranker(model=CrossEncoder(model=...), top_n=3)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require

require("langchain_core")

from langchain_core.callbacks import Callbacks
from langchain_core.cross_encoders import BaseCrossEncoder
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PositiveInt, model_validator

from rerank_plugins._options import check_fields
from rerank_plugins.batching import BatchingScorer
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import scorer_from
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import ascore_groups, score_groups, with_instruction

if TYPE_CHECKING:
    from rerank_plugins.scoring import Scorer

__all__ = ["CrossEncoder", "RerankCompressor"]

METADATA_KEY = "rerank_plugins"
"""Namespaced metadata: ``{"kind", "tokens", "truncated", "index"}`` of each result."""


class RerankCompressor(BaseDocumentCompressor):
    """Reorders documents by relevance to the query and keeps the best ``top_n``.

    Returns copies of the input documents (ids and metadata kept, inputs untouched) with
    ``metadata["relevance_score"]`` and ``metadata["rerank_plugins"]`` set, most relevant
    first. Give a ``scorer`` or a ``model`` spec (hub id, directory or endpoint URL) with
    ``model_kwargs``; with neither, the default local model is loaded.
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
    # The default is the one of LangChain's own CrossEncoderReranker and CohereRerank
    # (README, "Defaults"); None keeps every document, reordered.
    top_n: PositiveInt | None = Field(
        default=3, description="How many documents to keep (None: all, reordered)."
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
            self.scorer, self.instruction, option="RerankCompressor(instruction=...)"
        )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        scorer = self._instructed()
        texts = [d.page_content for d in documents]
        (scores,) = score_groups(scorer, [(query, texts)])
        ranked = rank(scores, top_n=self.top_n, score_threshold=self.score_threshold)
        return self._annotate(documents, ranked)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        if not documents:
            return []
        scorer = self._instructed()
        texts = [d.page_content for d in documents]
        (scores,) = await ascore_groups(scorer, [(query, texts)])
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


class CrossEncoder(BaseCrossEncoder):
    """LangChain's ``BaseCrossEncoder`` (``score(text_pairs) -> list[float]``) over a scorer.

    ``CrossEncoder(model="Alibaba-NLP/gte-reranker-modernbert-base")`` or
    ``CrossEncoder(scorer=...)``; ``model_kwargs`` go to :func:`rerank_plugins.load_scorer`.
    Pairs that share a query are scored in one call (one packed batch job), and the scores
    come back in the order of ``text_pairs``.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        scorer: Scorer | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = None if model is None else str(model)
        self.scorer: Scorer = scorer_from(scorer, model, dict(model_kwargs or {}))

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        for i, pair in enumerate(text_pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidInputError(
                    f"text_pairs[{i}] is not a (query, document) pair", indices=[i]
                )
        scored = score_groups(self.scorer, [(query, [document]) for query, document in text_pairs])
        return [group[0].value for group in scored]

    def __repr__(self) -> str:
        return f"CrossEncoder(model={self.model!r}, scorer={self.scorer!r})"
