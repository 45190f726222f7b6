"""``rerank-plugins serve``: any scorer behind the Cohere/Jina, TEI and vLLM rerank APIs.

- :func:`create_app` (``rerank_plugins.serve.app``): a FastAPI app over an already-loaded
  scorer; its lifespan starts the batcher in the server's event loop.
- :class:`MicroBatcher` (``rerank_plugins.batching``): cross-request dynamic
  batching, pure asyncio, no HTTP.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client); importing this package
imports none of them until a name is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rerank_plugins.batching.batcher import MicroBatcher
    from rerank_plugins.serve.app import create_app

__all__ = ["MicroBatcher", "create_app"]

_LAZY = {"create_app": "rerank_plugins.serve.app", "MicroBatcher": "rerank_plugins.serve.batcher"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    from rerank_plugins._imports import require

    for dependency in ("fastapi", "prometheus_client"):
        require(dependency)
    return getattr(importlib.import_module(module), name)
