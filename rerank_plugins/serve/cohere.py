"""The Cohere (v1, v2) and Jina rerank dialect: ``POST /v1/rerank``, ``POST /v2/rerank``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rerank_plugins.ranking import rank
from rerank_plugins.serve.body import JsonRoute
from rerank_plugins.serve.handlers import ERROR_RESPONSES
from rerank_plugins.serve.schemas import (
    ApiMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    TextDocument,
    Usage,
)
from rerank_plugins.serve.service import (
    Service,
    answer_headers,
    ignored_fields,
    request_id,
    service,
)

__all__ = ["cohere_answer", "router"]

router = APIRouter(route_class=JsonRoute)


async def cohere_answer(
    request: Request, body: CohereRerankRequest, served: Service
) -> JSONResponse:
    """The Cohere answer to ``body`` (also given by TEI's ``/rerank`` to Cohere bodies)."""
    texts = [d.text if isinstance(d, TextDocument) else d for d in body.documents]
    outcome = await served.score(
        request,
        [(body.query, texts)],
        truncate=body.truncate,
        max_document_tokens=body.max_tokens_per_doc,
        instruction=body.instruction,
    )
    results = [
        CohereResult(
            index=r.index,
            relevance_score=r.score.value,
            document=_document(body.documents[r.index]) if body.return_documents else None,
        )
        for r in rank(outcome.scores, top_n=body.top_n)
    ]
    cut = outcome.truncated
    warnings = (
        [f"documents {cut} were truncated to fit the model's window or max_tokens_per_doc"]
        if cut
        else []
    )
    ignored = ignored_fields(body)
    if ignored:
        warnings.append(f"unknown fields ignored: {', '.join(ignored)}")
    answer = CohereRerankResponse(
        id=request_id(request),
        model=served.name,
        results=results,
        meta=ApiMeta(
            billed_units={"search_units": 1},
            tokens={"input_tokens": outcome.tokens},
            warnings=warnings,
            truncated_documents=cut,
        ),
        usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
    )
    return JSONResponse(answer.model_dump(exclude_none=True), headers=answer_headers(outcome, body))


@router.post(
    "/v1/rerank",
    response_model=CohereRerankResponse,
    responses=ERROR_RESPONSES,
    summary="Cohere v1 / Jina rerank",
)
async def rerank_v1(
    request: Request, body: CohereRerankRequest, served: Annotated[Service, Depends(service)]
) -> JSONResponse:
    return await cohere_answer(request, body, served)


@router.post(
    "/v2/rerank",
    response_model=CohereRerankResponse,
    responses=ERROR_RESPONSES,
    summary="Cohere v2 rerank",
)
async def rerank_v2(
    request: Request, body: CohereRerankRequest, served: Annotated[Service, Depends(service)]
) -> JSONResponse:
    return await cohere_answer(request, body, served)


def _document(doc: str | TextDocument) -> dict[str, Any]:
    return doc.model_dump() if isinstance(doc, TextDocument) else {"text": doc}
