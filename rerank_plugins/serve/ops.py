"""Operations endpoints: ``GET /health``, ``/v1/models``, ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from rerank_plugins.batching.batcher import BatcherClosedError
from rerank_plugins.serve.schemas import ModelCard, ModelList
from rerank_plugins.serve.service import Service, service

__all__ = ["router"]

router = APIRouter()


@router.get("/health", summary="200 while serving (503 once shutting down)")
async def health(served: Annotated[Service, Depends(service)]) -> dict[str, str]:
    if served.batcher.closing:
        raise BatcherClosedError("the server is shutting down")
    return {"status": "ok"}


@router.get("/v1/models", response_model=ModelList, summary="the served model")
async def models(served: Annotated[Service, Depends(service)]) -> ModelList:
    return ModelList(
        data=[ModelCard(id=served.name, created=served.created, max_model_len=served.window)]
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus(served: Annotated[Service, Depends(service)]) -> Response:
    return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)
