"""Local cross-encoder scorer: ``(query, document)`` pairs through a sequence classifier."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rerank_plugins._options import checked_options
from rerank_plugins.errors import InvalidInputError, UnsupportedModelError
from rerank_plugins.local.base import LocalScorer
from rerank_plugins.local.checkpoint import guard_checkpoint_init, load_tokenizer
from rerank_plugins.local.chunking import Aggregate, aggregate, past_the_window_options
from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.local.progress import BatchProgress
from rerank_plugins.local.tokenization import ChunkedPair, EncodedPair, PairEncoder
from rerank_plugins.scoring import OverflowPolicy, Score, check_inputs

if TYPE_CHECKING:
    import torch
    from pydantic import SecretStr

__all__ = ["CrossEncoderScorer", "PairClassifier"]

logger = logging.getLogger(__name__)

Output = Literal["probability", "logit"]
Runtime = Literal["auto", "native", "transformers"]
"""What runs the model (the ``engine=`` option): "native" (``local/engine/``, the packed
ModernBERT and GTE engines), "transformers", or "auto" (native where there is one)."""

# Learned absolute positions of RoBERTa-family models start after the padding index.
_POSITION_OFFSET_TYPES = frozenset({"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl"})


def _units(pairs: Sequence[EncodedPair | ChunkedPair]) -> list[EncodedPair]:
    """The sequences the model runs: each pair, or each window of a chunked pair."""
    return [c for p in pairs for c in (p.chunks if isinstance(p, ChunkedPair) else (p,))]


class PairClassifier(Protocol):
    """What the scorer needs from a model: logits for a batch of encoded pairs."""

    padded: bool  # batches cost len(batch) * longest (True) or sum of lengths (False)
    num_labels: int

    def logits(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """Float32 CPU tensor ``[len(batch), num_labels]``."""
        ...


def model_window(config: dict[str, Any]) -> int:
    """The real number of positions a checkpoint can attend to."""
    # The positions the model has, not the tokenizer's model_max_length: tokenizer configs
    # often carry a 512 inherited from a base model (the silent cut this package avoids).
    window = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in _POSITION_OFFSET_TYPES:
        window -= int(config.get("pad_token_id") or 0) + 1
    return window


class CrossEncoderScorer(LocalScorer):
    """Scores documents with a local sequence-classification cross-encoder.

    ``model`` is a hub id or a local directory. ModernBERT checkpoints run on the native
    packed engine; other architectures run through transformers (``engine`` overrides).
    Scores are ``sigmoid(logit)`` (``output="probability"``) or the raw logit.

    Options: ``device`` ("auto" = CUDA, else Apple MPS, else CPU; or "cpu", "cuda", "mps",
    ...), ``dtype`` ("auto" = bf16 on CUDA, fp32 on CPU and MPS; "float32", "bfloat16",
    "float16", or "int8" = dynamic int8 linear layers on CPUs with VNNI/AMX, native engines
    only; a CPU mode the processor cannot run fast raises ``UnsupportedDeviceError``),
    ``max_length`` (default: the model's window, clamped to it), ``overflow`` ("truncate",
    "error", or "chunk": a longer document is split into token windows, each scored as its
    own pair with the query, and its score is ``aggregate`` over them — see
    :mod:`rerank_plugins.local.chunking`; ``chunk_tokens`` default: all the room the
    window leaves beside the query, ``chunk_overlap`` default 0, ``aggregate`` "max",
    "mean", "top2" or "top3"; ``Score.chunks`` says how many windows), ``max_tokens_per_doc``
    (cut every document to its first N tokens, flagged ``truncated``; with "chunk" the cap
    comes first), ``batch_tokens`` (token budget per forward; default
    :func:`~rerank_plugins.local.engine.device.default_batch_tokens`: 2,048 on CPU, 16,384
    per 10 GiB of a CUDA card up to 131,072; read it back as ``scorer.batch_tokens``),
    ``backend`` (the native engine's attention: "auto", "varlen", "flex" or "sdpa"),
    ``show_progress`` (a tqdm bar: False by default, True, or None for "when
    stderr is a terminal and the call is more than a few batches"), ``cache`` (share loaded
    weights with other scorers on the same checkpoint, device, dtype and mode; default
    True). Hub options, used for the download only: ``revision``, ``cache_dir``,
    ``local_files_only``, ``token`` (default ``$HF_TOKEN``).

    Pickling or deep-copying a scorer re-creates it from its checkpoint directory (the
    copy shares the loaded weights within a process; another process loads them again).
    """

    offers_int8 = True

    @checked_options
    @guard_checkpoint_init
    def __init__(
        self,
        model: str | Path,
        *,
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
        engine: Runtime = "auto",
        backend: str = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        show_progress: bool | None = False,
        cache: bool = True,
    ) -> None:
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
        self._setup(model, options, output=output, engine=engine)

    def _setup(
        self, model: str | Path, options: LocalOptions, *, output: Output, engine: Runtime
    ) -> None:
        """Open the checkpoint and load (or share) the classifier; ``__init__`` of this
        class and its subclasses end here."""
        if output not in ("probability", "logit"):
            raise InvalidInputError(f"output must be 'probability' or 'logit', got {output!r}")
        self.backend = options.backend
        self.engine = engine
        self.output: Output = output
        self._open(model, options)
        self.window = model_window(self.config)
        max_length = options.max_length
        if max_length is None:
            max_length = self.window
        elif max_length > self.window:
            logger.warning(
                "max_length=%d is beyond the model's window; using %d", max_length, self.window
            )
            max_length = self.window
        self.encoder = PairEncoder(
            load_tokenizer(self.directory),
            max_length=max_length,
            overflow=options.overflow,
            chunking=options.chunking(),
            max_document_tokens=options.max_tokens_per_doc,
        )
        self.classifier = self._shared_weights(
            self._weights_key(), lambda: self._load_classifier(engine)
        )
        if self.classifier.num_labels not in (1, 2):
            raise UnsupportedModelError(
                f"{self.name} has {self.classifier.num_labels} labels; a cross-encoder "
                "reranker has 1 (relevance logit) or 2 (irrelevant, relevant)"
            )

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def overflow(self) -> OverflowPolicy:
        """The policy for documents over the window ("truncate", "error" or "chunk")."""
        return self.encoder.overflow

    def identity(self) -> dict[str, Any]:
        """What changes this scorer's scores: the checkpoint's fingerprint (whatever path or
        hub id named it) and the resolved options (see ``rerank_plugins.identity``)."""
        from rerank_plugins.local.fingerprint import local_identity

        return local_identity(type(self).__name__, self.directory, self._score_options())

    def _score_options(self) -> dict[str, object]:
        return {
            "dtype": self.dtype,
            "int8": self.quantize,
            "output": self.output,
            "overflow": self.encoder.overflow,
            "max_length": self.max_length,
            "engine": self.engine,
            **past_the_window_options(
                self.encoder.overflow, self.encoder.chunking, self.encoder.max_document_tokens
            ),
        }

    def _weights_key(self) -> tuple[Any, ...]:
        """What, beyond checkpoint, device and dtype, tells this scorer's loaded model apart."""
        return (CrossEncoderScorer, self.engine, self.backend)

    def _load_classifier(self, engine: Runtime) -> PairClassifier:
        if engine not in ("auto", "native", "transformers"):
            raise InvalidInputError(f"unknown engine {engine!r}")
        pad = self.config.get("pad_token_id")
        pad_id = int(pad) if isinstance(pad, int) else 0
        if self.config.get("model_type") == "new" and engine != "transformers":
            # GTE "new" (gte-multilingual-reranker-base) ships only remote code: always native.
            from rerank_plugins.local.engine.gte import GteNewPairClassifier

            return GteNewPairClassifier.from_checkpoint(
                self.directory,
                device=self.device,
                dtype=self.dtype,
                backend=self.backend,
                config=self.config,
                quantize=self.quantize,
            )
        if self.config.get("model_type") == "modernbert" and engine != "transformers":
            from rerank_plugins.local.engine.modernbert import ModernBertPairClassifier

            return ModernBertPairClassifier.from_checkpoint(
                self.directory,
                device=self.device,
                dtype=self.dtype,
                backend=self.backend,
                config=self.config,
                quantize=self.quantize,
            )
        if self.quantize is not None:
            raise InvalidInputError(
                f"dtype={self.quantize!r} runs on the native engines only (ModernBERT, GTE), "
                f"not through transformers for {self.config.get('model_type')!r}"
            )
        if engine == "native":
            raise UnsupportedModelError(f"no native engine for {self.config.get('model_type')!r}")
        from rerank_plugins.local.engine.hf import TransformersPairClassifier

        return TransformersPairClassifier(
            self.directory, device=self.device, dtype=self.dtype, pad_token_id=pad_id
        )

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        return self.score_pairs(self.encoder.encode(query, docs))

    def encode_pairs(
        self,
        query: str,
        documents: Sequence[str],
        *,
        overflow: OverflowPolicy | None = None,
        max_document_tokens: int | None = None,
    ) -> list[EncodedPair | ChunkedPair]:
        """Tokenise ``(query, document)`` pairs for :meth:`score_pairs` (the
        :class:`~rerank_plugins.scoring.PairScorer` seam). ``overflow`` overrides the
        scorer's policy for this call; ``max_document_tokens`` cuts documents further."""
        docs = check_inputs(query, documents)
        return self.encoder.encode(
            query, docs, overflow=overflow, max_document_tokens=max_document_tokens
        )

    def score_pairs(
        self, pairs: Sequence[EncodedPair | ChunkedPair], *, raw: bool = False
    ) -> list[Score]:
        """Scores of encoded pairs, in order; the pairs may come from different queries.

        Batched by the scorer's token budget like :meth:`score` (the windows of chunked
        documents go into the same batches as the other pairs). ``raw=True`` returns the
        relevance logit (kind ``"logit"``) whatever ``output`` says; a chunked document's
        score is the aggregate of its windows' scores (probabilities or logits).
        """
        if not pairs:
            return []
        return self._scores(pairs, self._logits(_units(pairs)), raw=raw)

    def score_batch(
        self, pairs: Sequence[EncodedPair | ChunkedPair], *, raw: bool = False
    ) -> list[Score]:
        """Scores of pairs that already form one batch, in one forward, in their order.

        For a caller that budgets its own batches (the server's batcher: within
        :attr:`batch_tokens`, costed as :attr:`padded` says, sorted longest first): the
        pairs are neither split nor re-sorted. Scores equal :meth:`score_pairs`'. The
        windows of a chunked document (which may be far over the budget on its own) go
        through :meth:`score_pairs`' budgeted batches instead.
        """
        if not pairs:
            return []
        if any(isinstance(p, ChunkedPair) for p in pairs):
            return self.score_pairs(pairs, raw=raw)
        logits = self.classifier.logits(_units(pairs))
        rel = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        return self._scores(pairs, rel.tolist(), raw=raw)

    @property
    def padded(self) -> bool:
        """Whether a batch costs ``len(batch) * longest`` tokens (padded) or the sum (packed)."""
        return bool(self.classifier.padded)

    def _scores(
        self, pairs: Sequence[EncodedPair | ChunkedPair], logits: Sequence[float], *, raw: bool
    ) -> list[Score]:
        """One score per pair from one logit per unit (a chunked pair's windows: theirs,
        aggregated)."""
        kind: Output = "logit" if raw else self.output
        values = logits if raw else [self._value(x) for x in logits]
        out = []
        at = 0
        for pair in pairs:
            if isinstance(pair, ChunkedPair):
                n = len(pair.chunks)
                out.append(
                    Score(
                        value=aggregate(values[at : at + n], pair.aggregate),
                        kind=kind,
                        tokens=pair.tokens,
                        truncated=pair.truncated,
                        chunks=n,
                    )
                )
                at += n
            else:
                out.append(
                    Score(value=values[at], kind=kind, tokens=pair.tokens, truncated=pair.truncated)
                )
                at += 1
        return out

    def _logits(self, pairs: Sequence[EncodedPair]) -> list[float]:
        """One relevance logit per pair, in input order."""
        batches = token_budget_batches(
            [len(p.ids) for p in pairs], max_tokens=self.batch_tokens, padded=self.classifier.padded
        )
        out = [math.nan] * len(pairs)
        progress = BatchProgress(
            batches=len(batches),
            tokens=sum(len(p.ids) for p in pairs),
            show=self.show_progress,
            desc="rerank",
        )
        with progress:
            for batch in batches:
                raw = self.classifier.logits([pairs[i] for i in batch])
                rel = raw[:, 0] if raw.shape[1] == 1 else raw[:, 1] - raw[:, 0]
                for i, value in zip(batch, rel.tolist(), strict=True):
                    out[i] = value
                progress.update(sum(len(pairs[i].ids) for i in batch))
        return out

    def _value(self, logit: float) -> float:
        if self.output == "logit":
            return logit
        return 0.5 * (1.0 + math.tanh(0.5 * logit))  # sigmoid without exp overflow

    def _repr_fields(self) -> dict[str, Any]:
        return {**super()._repr_fields(), "max_length": self.max_length}
