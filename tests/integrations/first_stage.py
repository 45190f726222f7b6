"""The offline MiniLM first stage, from the package (shared with the notebooks)."""

from __future__ import annotations

from rerank_plugins.testing.first_stage import (
    embed,
    langchain_embeddings,
    llama_index_embedding,
    minilm,
)

# The names the integration tests use: calling one gives an embeddings instance.
MiniLMEmbeddings = langchain_embeddings
MiniLMEmbedding = llama_index_embedding

__all__ = ["MiniLMEmbedding", "MiniLMEmbeddings", "embed", "minilm"]
