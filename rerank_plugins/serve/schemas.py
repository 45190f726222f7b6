"""Request and response bodies of the rerank APIs the server speaks (pydantic models).

Unknown request fields are ignored, as the reference servers do, so that clients sending
fields of newer API versions (Cohere's ``priority``, ``rank_fields``, ...) are served; the
answer names them (the ``X-Ignored-Fields`` header, and Cohere's ``meta.warnings``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiMeta",
    "CohereRerankRequest",
    "CohereRerankResponse",
    "CohereResult",
    "ErrorBody",
    "ModelCard",
    "ModelList",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
    "TEIRank",
    "TEIRerankRequest",
    "Usage",
]


class _Request(BaseModel):
    # Kept (not refused), so that the answer can list them as ignored.
    model_config = ConfigDict(extra="allow")


class TextDocument(BaseModel):
    """A document given as an object: its ``text`` is scored, other fields echoed back."""

    model_config = ConfigDict(extra="allow")
    text: str


class CohereRerankRequest(_Request):
    """Cohere v1/v2 and Jina ``/rerank`` request."""

    model: str | None = Field(None, description="accepted and echoed; one model is served")
    query: str
    documents: list[str | TextDocument]
    top_n: int | None = Field(None, ge=1, description="keep the best N (default: all)")
    return_documents: bool = Field(False, description="echo each document in its result")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="cut each document to this many tokens (reported as truncated)"
    )
    truncate: bool = Field(
        True,
        description="extension: false refuses documents over the model's window (413) "
        "instead of truncating them",
    )
    instruction: str | None = Field(
        None,
        description="decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2): the task instruction "
        "for this request, in place of the model's default; refused (422) by a model that "
        "takes none",
    )


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class ApiMeta(BaseModel):
    api_version: dict[str, Any] = Field(default_factory=lambda: {"version": "2"})
    billed_units: dict[str, Any] = Field(default_factory=dict)
    tokens: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    truncated_documents: list[int] = Field(
        default_factory=list, description="indices of the documents that were cut to fit"
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CohereRerankResponse(BaseModel):
    id: str
    model: str
    results: list[CohereResult]
    meta: ApiMeta
    usage: Usage


class TEIRerankRequest(_Request):
    """TEI ``/rerank`` request."""

    query: str
    texts: list[str]
    truncate: bool = Field(
        False, description="cut texts over the window (default, as TEI: refuse them)"
    )
    truncation_direction: Literal["Right", "right"] = Field(
        "Right", description="only right truncation (the document's end is cut)"
    )
    raw_scores: bool = Field(False, description="return logits instead of probabilities")
    instruction: str | None = Field(
        None,
        description="decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2): the task instruction "
        "for this request, in place of the model's default; refused (422) by a model that "
        "takes none",
    )
    return_text: bool = False
    max_tokens_per_doc: int | None = Field(
        None,
        ge=1,
        description="extension (Cohere's field): cut each text to this many tokens "
        "(reported as truncated)",
    )


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class ScoreRequest(_Request):
    """vLLM ``/score`` request: one query (``text_1``) against ``text_2``, or pairwise."""

    model: str | None = None
    text_1: str | list[str]
    text_2: str | list[str]
    truncate_prompt_tokens: Literal[-1] | None = Field(
        None, description="-1: truncate to the model's window; absent: refuse over-length"
    )
    use_activation: bool | None = Field(None, description="false: return logits")
    max_tokens_per_doc: int | None = Field(
        None,
        ge=1,
        description="extension (Cohere's field): cut each text_2 to this many tokens "
        "(reported as truncated)",
    )


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: Usage
    truncated_documents: list[int] = Field(default_factory=list)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rerank-plugins"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """Error answer: ``error``/``error_type`` as TEI, ``message`` as Cohere and vLLM."""

    error: str
    error_type: str
    message: str
    indices: list[int] = Field(default_factory=list)
