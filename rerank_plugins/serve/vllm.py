"""The vLLM score dialect: ``POST /score`` and ``/v1/score`` (one query or one per text)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.serve.body import JsonRoute
from rerank_plugins.serve.handlers import ERROR_RESPONSES
from rerank_plugins.serve.schemas import ScoreData, ScoreRequest, ScoreResponse, Usage
from rerank_plugins.serve.service import Service, answer_headers, request_id, service

__all__ = ["router"]

router = APIRouter(route_class=JsonRoute)


async def _score(request: Request, body: ScoreRequest, served: Service) -> JSONResponse:
    first = [body.text_1] if isinstance(body.text_1, str) else body.text_1
    second = [body.text_2] if isinstance(body.text_2, str) else body.text_2
    groups: list[tuple[str, Sequence[str]]]
    if len(first) == 1:
        groups = [(first[0], second)]
    elif len(first) == len(second):
        groups = [(q, [d]) for q, d in zip(first, second, strict=True)]
    else:
        raise InvalidInputError(
            f"text_1 has {len(first)} texts and text_2 {len(second)}: give one text_1, "
            "or as many as text_2"
        )
    outcome = await served.score(
        request,
        groups,
        truncate=body.truncate_prompt_tokens is not None,
        max_document_tokens=body.max_tokens_per_doc,
        raw=body.use_activation is False,
    )
    answer = ScoreResponse(
        id=f"score-{request_id(request)}",
        created=int(time.time()),
        model=served.name,
        data=[ScoreData(index=i, score=s.value) for i, s in enumerate(outcome.scores)],
        usage=Usage(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens),
        truncated_documents=outcome.truncated,
    )
    return JSONResponse(answer.model_dump(), headers=answer_headers(outcome, body))


@router.post(
    "/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, summary="vLLM score"
)
async def score_route(
    request: Request, body: ScoreRequest, served: Annotated[Service, Depends(service)]
) -> JSONResponse:
    return await _score(request, body, served)


@router.post(
    "/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES, summary="vLLM score"
)
async def score_v1(
    request: Request, body: ScoreRequest, served: Annotated[Service, Depends(service)]
) -> JSONResponse:
    return await _score(request, body, served)
