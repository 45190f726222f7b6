"""What every local scorer shares: its options, checkpoint, device and dtype, token budget,
the worker thread behind ``ascore``, the weight-cache key, pickling and repr."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rerank_plugins._options import Rebuildable
from rerank_plugins.local.bounds import bounded_config
from rerank_plugins.local.checkpoint import HUB_OPTIONS, read_json, resolve_checkpoint
from rerank_plugins.local.engine.device import (
    default_batch_tokens,
    pick_device,
    pick_dtype,
    pick_mode,
)
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.local.weights import checkpoint_key, shared_weights
from rerank_plugins.local.worker import LocalWorker
from rerank_plugins.scoring import Score, check_inputs

if TYPE_CHECKING:
    import torch

__all__ = ["LocalModel", "LocalScorer"]

T = TypeVar("T")


class LocalModel(Rebuildable):
    """Base of the in-process models (the scorers and :class:`FillMask`).

    A subclass's ``__init__`` (decorated with ``checked_options``, so that pickling
    re-runs it) builds a :class:`LocalOptions` from its keyword arguments and calls
    :meth:`_open`, then loads its model through :meth:`_shared_weights`.
    """

    worker_name: ClassVar[str] = "rerank-local"
    offers_int8: ClassVar[bool] = False

    options: LocalOptions
    directory: Path
    name: str
    config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    quantize: str | None
    show_progress: bool | None

    def _open(self, model: str | Path, options: LocalOptions) -> None:
        """Resolve the checkpoint (downloading it if asked), read its ``config.json`` and
        pick device, dtype and token budget."""
        self.options = options
        self.show_progress = options.show_progress
        self.directory = resolve_checkpoint(model, **options.hub())
        self.name = str(model)
        self._check_directory()
        # Sizes checked against the weights present before anything is built.
        self.config = bounded_config(self.directory, read_json(self.directory / "config.json"))
        self.device = pick_device(options.device)
        if self.offers_int8:
            self.dtype, self.quantize = pick_mode(options.dtype, self.device)
        else:  # "int8" is then an unknown dtype
            self.dtype, self.quantize = pick_dtype(options.dtype, self.device), None
        self._batch_tokens = (
            default_batch_tokens(self.device)
            if options.batch_tokens is None
            else options.batch_tokens
        )
        self._worker = LocalWorker(self.worker_name)

    def _check_directory(self) -> None:
        """Raise before anything is read when the checkpoint is not of this scorer's kind."""

    def _shared_weights(self, parts: Sequence[Hashable], load: Callable[[], T]) -> T:
        """``load()``'s result, shared through the weight cache with every scorer whose
        ``parts`` (what tells loaded models apart beyond checkpoint, device and dtype)
        match; a private copy with ``cache=False``."""
        key = (
            *parts,
            checkpoint_key(self.directory),
            str(self.device),
            self.dtype,
            self.quantize,  # int8 rewrites the loaded model's linears in place
        )
        return shared_weights(key, load, cache=self.options.cache)

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # The copy is built from the resolved directory: no download, no token to carry.
        args, kwargs = super()._rebuild_arguments()
        for name in HUB_OPTIONS:
            kwargs.pop(name, None)
        kwargs.pop("model", None)
        return (str(self.directory), *args[1:]), kwargs

    def _repr_fields(self) -> dict[str, Any]:
        return {"model": self.name, "device": str(self.device)}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._repr_fields().items())
        return f"{type(self).__name__}({fields})"


class LocalScorer(LocalModel):
    """Base of the in-process scorers: a subclass implements ``score``; ``ascore`` runs it
    on the scorer's own worker thread (forward passes one at a time)."""

    @property
    def batch_tokens(self) -> int:
        """Token budget of one forward (the ``batch_tokens`` option, else the device's
        default: :func:`~rerank_plugins.local.engine.device.default_batch_tokens`)."""
        return self._batch_tokens

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        raise NotImplementedError

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        result: list[Score] = await self._worker.run(self.score, query, docs)
        return result
