"""The TEI rerank dialect: ``POST /rerank`` (a body with ``texts``; one with ``documents``
is answered as Cohere)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rerank_plugins.ranking import rank
from rerank_plugins.serve.body import JsonRoute
from rerank_plugins.serve.cohere import cohere_answer
from rerank_plugins.serve.handlers import ERROR_RESPONSES
from rerank_plugins.serve.schemas import (
    CohereRerankRequest,
    CohereRerankResponse,
    TEIRank,
    TEIRerankRequest,
)
from rerank_plugins.serve.service import Service, answer_headers, service

__all__ = ["router"]

router = APIRouter(route_class=JsonRoute)


@router.post(
    "/rerank",
    response_model=list[TEIRank] | CohereRerankResponse,
    responses=ERROR_RESPONSES,
    summary="TEI rerank (a body with texts) or Cohere rerank (a body with documents)",
)
async def rerank_tei(
    request: Request,
    body: TEIRerankRequest | CohereRerankRequest,
    served: Annotated[Service, Depends(service)],
) -> JSONResponse:
    if isinstance(body, CohereRerankRequest):
        return await cohere_answer(request, body, served)
    outcome = await served.score(
        request,
        [(body.query, body.texts)],
        truncate=body.truncate,
        max_document_tokens=body.max_tokens_per_doc,
        raw=body.raw_scores,
        instruction=body.instruction,
    )
    ranks = [
        TEIRank(
            index=r.index,
            score=r.score.value,
            text=body.texts[r.index] if body.return_text else None,
        ).model_dump(exclude_none=True)
        for r in rank(outcome.scores)
    ]
    return JSONResponse(ranks, headers=answer_headers(outcome, body))
