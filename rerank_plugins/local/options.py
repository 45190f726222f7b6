"""The options every local scorer shares, in one frozen object checked once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.checkpoint import HUB_OPTIONS
from rerank_plugins.local.chunking import OVERFLOW_POLICIES, Aggregate, ChunkOptions, check_overflow
from rerank_plugins.local.progress import check_show_progress
from rerank_plugins.local.tokenization import check_max_document_tokens
from rerank_plugins.scoring import OverflowPolicy

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = ["OVERFLOW_POLICIES", "LocalOptions"]


@dataclass(frozen=True)
class LocalOptions:
    """What every local scorer is configured with (its own options come beside these).

    ``device``: "auto" (CUDA, else Apple MPS, else CPU) or a torch device string.
    ``dtype``: "auto" (bf16 on CUDA, fp32 elsewhere), "float32", "bfloat16", "float16",
    or "int8" where the scorer offers it. ``max_length``: tokens per sequence (default: the
    model's window, clamped to it). ``overflow``: "truncate" (cut and flag), "error", or
    "chunk" (token windows scored apart: ``chunk_tokens``, ``chunk_overlap``, ``aggregate``,
    see :mod:`rerank_plugins.local.chunking`). ``max_tokens_per_doc``: cut every document
    to its first N tokens (flagged), before the overflow policy.
    ``batch_tokens``: token budget of one forward (default:
    :func:`~rerank_plugins.local.engine.device.default_batch_tokens` of the device).
    ``backend``: the native engine's attention ("auto", "varlen", "flex", "sdpa").
    ``show_progress``: a tqdm bar (False, True, or None for "when stderr is a terminal").
    ``cache``: share loaded weights with other scorers on the same checkpoint, device and
    dtype (the process-wide weight cache). Hub options, for the download only:
    ``revision``, ``cache_dir``, ``local_files_only``, ``token`` (default ``$HF_TOKEN``).
    """

    device: str | None = "auto"
    dtype: str | None = "auto"
    max_length: int | None = None
    overflow: OverflowPolicy = "truncate"
    chunk_tokens: int | None = None
    chunk_overlap: int = 0
    aggregate: Aggregate = "max"
    max_tokens_per_doc: int | None = None
    batch_tokens: int | None = None
    backend: str = "auto"
    show_progress: bool | None = False
    cache: bool = True
    revision: str | None = None
    cache_dir: str | Path | None = None
    local_files_only: bool = False
    token: str | SecretStr | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_overflow(self.overflow)
        self.chunking()  # checks chunk_tokens, chunk_overlap and aggregate
        check_max_document_tokens(self.max_tokens_per_doc)
        if self.batch_tokens is not None and self.batch_tokens <= 0:
            raise InvalidInputError(f"batch_tokens must be positive, got {self.batch_tokens}")
        check_show_progress(self.show_progress)
        if not isinstance(self.cache, bool):
            raise InvalidInputError(
                f"cache (weight sharing) must be True or False, got {self.cache!r}"
            )

    def chunking(self) -> ChunkOptions:
        """The ``overflow="chunk"`` options, checked."""
        return ChunkOptions(
            chunk_tokens=self.chunk_tokens,
            chunk_overlap=self.chunk_overlap,
            aggregate=self.aggregate,
        )

    def hub(self) -> dict[str, Any]:
        """The hub options, as :func:`~rerank_plugins.local.checkpoint.resolve_checkpoint`
        takes them."""
        return {name: getattr(self, name) for name in HUB_OPTIONS}
