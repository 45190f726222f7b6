"""Local decoder reranker scorer: Qwen3-Reranker and mxbai-rerank-v2 on the packed engine."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rerank_plugins._options import checked_options
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.base import LocalScorer
from rerank_plugins.local.checkpoint import guard_checkpoint_init, load_tokenizer
from rerank_plugins.local.chunking import Aggregate, aggregate, past_the_window_options
from rerank_plugins.local.decoder_prompt import (
    DecoderChunks,
    DecoderPair,
    DecoderPrompt,
    template_for,
)
from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.local.progress import BatchProgress
from rerank_plugins.scoring import OverflowPolicy, Score, check_inputs

if TYPE_CHECKING:
    from pydantic import SecretStr

    from rerank_plugins.local.engine.qwen import QwenReranker

__all__ = ["DEFAULT_MAX_LENGTH", "DecoderScorer", "hub_id_of"]

logger = logging.getLogger(__name__)

Output = Literal["probability", "logit"]

DEFAULT_MAX_LENGTH = 8192
"""The window the model cards use (Qwen3-Reranker's ``max_length``, mxbai's content length)."""


def hub_id_of(name: str, directory: Path) -> str | None:
    """The hub id a spec names: ``org/name`` as given, or read back from a hub cache path
    (``.../models--org--name/snapshots/<rev>``)."""
    if name.count("/") == 1 and not Path(name).expanduser().exists():
        return name
    for part in reversed(Path(directory).absolute().parts):
        if part.startswith("models--") and part.count("--") >= 2:
            org, _, repo = part.removeprefix("models--").partition("--")
            return f"{org}/{repo}"
    return None


class DecoderScorer(LocalScorer):
    """Scores documents with a local decoder reranker (a ``*ForCausalLM`` checkpoint).

    Qwen3 and Qwen2 trunks run on the native packed engine. The prompt template is
    ``template=`` ("qwen3-reranker" or "mxbai-rerank-v2"), else the one the hub id is
    known to use (:data:`~rerank_plugins.local.decoder_prompt.HUB_TEMPLATES`), else
    Qwen3-Reranker's. The score is ``sigmoid(logit_pos - logit_neg)`` at the prompt's last
    token (Qwen3: P(yes) over {no, yes}; mxbai: "1" against "0"), or the logit difference
    with ``output="logit"``.

    ``instruction`` replaces the template's default instruction (Qwen3's "Given a web
    search query, ..."; mxbai has none); ``prefix_cache`` (default True) runs the prompt
    up to the document once per query and lets every document continue it. Other options
    as :class:`~rerank_plugins.local.cross_encoder.CrossEncoderScorer`: ``device``,
    ``dtype`` (bf16 on CUDA, fp32 on CPU; "bfloat16"/"int8" CPU modes where the processor
    runs them fast), ``max_length`` (default 8,192 as the model cards, clamped to the
    model's positions), ``overflow`` ("truncate", "error" or "chunk": each token window
    of a longer document is scored as its own prompt, template and query before it and
    the suffix after it, and the document's score is ``aggregate`` over the windows'
    scores; ``chunk_tokens`` default: all the room the window leaves beside the template
    and query), ``chunk_overlap``, ``aggregate``, ``max_tokens_per_doc``, ``batch_tokens``,
    ``backend`` ("auto", "varlen", "sdpa"), ``show_progress``, ``cache`` and the hub options.
    """

    offers_int8 = True
    #: ``score`` / ``ascore`` take ``instruction=`` per call (the adapters' ``instruction``)
    takes_instruction = True

    @checked_options
    @guard_checkpoint_init
    def __init__(
        self,
        model: str | Path,
        *,
        template: str | None = None,
        instruction: str | None = None,
        prefix_cache: bool = True,
        device: str | None = "auto",
        dtype: str | None = "auto",
        max_length: int | None = None,
        overflow: OverflowPolicy = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int = 0,
        aggregate: Aggregate = "max",
        max_tokens_per_doc: int | None = None,
        output: Output = "probability",
        batch_tokens: int | None = None,
        backend: str = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        show_progress: bool | None = False,
        cache: bool = True,
    ) -> None:
        if output not in ("probability", "logit"):
            raise InvalidInputError(f"output must be 'probability' or 'logit', got {output!r}")
        if instruction is not None and not isinstance(instruction, str):
            raise InvalidInputError(f"instruction must be a str, got {type(instruction).__name__}")
        options = LocalOptions(
            device=device,
            dtype=dtype,
            max_length=max_length,
            overflow=overflow,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            aggregate=aggregate,
            max_tokens_per_doc=max_tokens_per_doc,
            batch_tokens=batch_tokens,
            backend=backend,
            show_progress=show_progress,
            cache=bool(cache),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        self.output: Output = output
        self.prefix_cache = bool(prefix_cache)
        self.instruction = instruction
        self.backend = options.backend
        self._open(model, options)
        self.window = int(self.config.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, self.window)
        elif max_length > self.window:
            logger.warning(
                "max_length=%d is beyond the model's window; using %d", max_length, self.window
            )
            max_length = self.window
        self.template = template_for(template, hub_id=hub_id_of(self.name, self.directory))
        self.prompt = DecoderPrompt(
            load_tokenizer(self.directory),
            self.template,
            max_length=max_length,
            overflow=options.overflow,
            chunking=options.chunking(),
            max_document_tokens=options.max_tokens_per_doc,
        )
        self.model: QwenReranker = self._shared_weights(
            (DecoderScorer, self.backend, self.prompt.answer_ids), self._load_model
        )

    @property
    def max_length(self) -> int:
        return self.prompt.max_length

    def identity(self) -> dict[str, Any]:
        """What changes this scorer's scores (see ``rerank_plugins.identity``): the
        checkpoint's fingerprint, the template and default instruction, and the resolved
        options; a resumed bulk run or a calibration file is checked against it."""
        from rerank_plugins.local.fingerprint import local_identity

        prompt = self.prompt
        options: dict[str, object] = {
            "dtype": self.dtype,
            "int8": self.quantize,
            "output": self.output,
            "overflow": prompt.overflow,
            "max_length": self.max_length,
            "template": self.template.name,
            "instruction": self.instruction,
            **past_the_window_options(prompt.overflow, prompt.chunking, prompt.max_document_tokens),
        }
        return local_identity(type(self).__name__, self.directory, options)

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super()._rebuild_arguments()
        # The template is fixed now: a copy from the directory must not fall back to Qwen3's.
        kwargs["template"] = self.template.name
        return args, kwargs

    def _load_model(self) -> QwenReranker:
        from rerank_plugins.local.engine.qwen import QwenReranker

        return QwenReranker.from_checkpoint(
            self.directory,
            answer_tokens=self.prompt.answer_ids,
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            config=self.config,
            quantize=self.quantize,
        )

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        """One score per document, in order. ``instruction`` overrides the scorer's for
        this call."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        shared, pairs = self.prompt.encode(
            query, docs, instruction=self.instruction if instruction is None else instruction
        )
        units = [c for p in pairs for c in (p.chunks if isinstance(p, DecoderChunks) else (p,))]
        values = [self._value(x) for x in self._logits(shared, units)]
        out = []
        at = 0
        for pair in pairs:
            if isinstance(pair, DecoderChunks):
                n = len(pair.chunks)
                value = aggregate(values[at : at + n], pair.aggregate)
                out.append(
                    Score(
                        value=value,
                        kind=self.output,
                        tokens=pair.tokens,
                        truncated=pair.truncated,
                        chunks=n,
                    )
                )
            else:
                n = 1
                out.append(
                    Score(
                        value=values[at],
                        kind=self.output,
                        tokens=pair.tokens,
                        truncated=pair.truncated,
                    )
                )
            at += n
        return out

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        result: list[Score] = await self._worker.run(
            lambda: self.score(query, docs, instruction=instruction)
        )
        return result

    def _logits(self, shared: list[int], pairs: Sequence[DecoderPair]) -> list[float]:
        """``logit_pos - logit_neg`` per pair, in input order."""
        p = len(shared)
        cached = [i for i, pair in enumerate(pairs) if self.prefix_cache and pair.shared]
        whole = [i for i, pair in enumerate(pairs) if not (self.prefix_cache and pair.shared)]
        out = [math.nan] * len(pairs)
        jobs: list[tuple[list[int], int]] = []  # (indices, context length)
        lengths = [len(pair.ids) - p for pair in pairs]
        for group, context in ((cached, p), (whole, 0)):
            # A continuing document costs its own tokens plus the context keys it reads
            # (the attention gathers them per document): the budget bounds that memory too.
            sizes = [lengths[i] + context if context else len(pairs[i].ids) for i in group]
            for batch in token_budget_batches(sizes, max_tokens=self.batch_tokens, padded=False):
                jobs.append(([group[b] for b in batch], context))
        progress = BatchProgress(
            batches=len(jobs),
            tokens=sum(len(pairs[i].ids) for i in whole) + sum(lengths[i] for i in cached),
            show=self.show_progress,
            desc="rerank",
        )
        past = self.model.context(shared) if cached else None
        with progress:
            for indices, context in jobs:
                seqs = [pairs[i].ids[context:] for i in indices]
                raw = self.model.answer_logits(
                    seqs, past=past if context else None, context=context
                ).cpu()
                for i, value in zip(indices, (raw[:, 1] - raw[:, 0]).tolist(), strict=True):
                    out[i] = value
                progress.update(sum(len(s) for s in seqs))
        return out

    def _value(self, logit: float) -> float:
        if self.output == "logit":
            return logit
        return 0.5 * (1.0 + math.tanh(0.5 * logit))  # sigmoid without exp overflow

    def _repr_fields(self) -> dict[str, Any]:
        return {
            **super()._repr_fields(),
            "template": self.template.name,
            "max_length": self.max_length,
        }
