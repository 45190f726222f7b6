"""2D-Matryoshka cross-encoder (mmbert-rerank-32k-2d-matryoshka) with a real early exit.

The published artifact is a bare ModernBERT encoder plus two files:

- ``matryoshka_config.json``: ``layer_indices`` (exit depths, e.g. [3, 6, 11, 22]),
  ``dim_indices`` (head widths, e.g. [768, 512, 256, 128, 64]), the pooling (``"cls"``) and
  ``has_final_norm``;
- ``classification_heads.pt``: one head per (layer, dim), keys ``"{layer}.{dim}.0.*"``
  (``Linear(d, d // 2)``) and ``"{layer}.{dim}.3.*"`` (``Linear(d // 2, 1)``) with an exact
  GELU between (index 2 was a dropout). Read with ``torch.load(weights_only=True)`` only.

The score at exit ``(L, d)`` runs the first ``L`` layers and nothing else, pools the first
token, applies ``final_norm`` when ``L`` is below the last layer, keeps the first ``d``
values and applies the ``(L, d)`` head: one relevance logit.

The last layer reads the *raw* (pre-``final_norm``) hidden state. That is what the heads
were trained on: the reference trainer (vllm-project/semantic-router,
``Matryoshka2DReranker``, transformers 4.x) takes ``hidden_states[L]`` and normalises it
only when ``L < num_layers``, and in transformers 4.x ``hidden_states[-1]`` is the output of
the last layer before ``final_norm``. (transformers 5 returns the normalised output there;
the reference project re-captures the raw exit for these heads.)
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins._options import checked_options
from rerank_plugins.errors import InvalidInputError, UnsupportedModelError
from rerank_plugins.local.checkpoint import guard_checkpoint_init, read_json
from rerank_plugins.local.chunking import Aggregate
from rerank_plugins.local.cross_encoder import CrossEncoderScorer, Output
from rerank_plugins.local.engine.modernbert import (
    ModernBert,
    ModernBertSpec,
    cls_pool,
    load_modernbert,
    mean_pool,
)
from rerank_plugins.local.engine.packing import PackedBatch, pack_sequences
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.local.tokenization import ChunkedPair, EncodedPair
from rerank_plugins.scoring import OverflowPolicy, Score

if TYPE_CHECKING:
    from pydantic import SecretStr

    from rerank_plugins.local.matryoshka_cascade import ExitCascade

__all__ = [
    "CONFIG_FILE",
    "HEADS_FILE",
    "MatryoshkaConfig",
    "MatryoshkaHead",
    "MatryoshkaPairClassifier",
    "MatryoshkaScorer",
    "build_head",
    "exit_features",
    "load_heads",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "matryoshka_config.json"
HEADS_FILE = "classification_heads.pt"
_POOLINGS = ("cls", "mean", "last")


@dataclass(frozen=True)
class MatryoshkaConfig:
    """The exit grid of a 2D-Matryoshka checkpoint (``matryoshka_config.json``).

    ``layer_indices`` are depths in ``1..num_layers`` (ascending), ``dim_indices`` head
    widths (descending); ``pooling`` is ``"cls"``, ``"mean"`` or ``"last"``.
    """

    layer_indices: tuple[int, ...]
    dim_indices: tuple[int, ...]
    pooling: str = "cls"
    has_final_norm: bool = True

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any], *, num_layers: int, hidden_size: int
    ) -> MatryoshkaConfig:
        """Read and check the file against the encoder's ``config.json``.

        >>> grid = MatryoshkaConfig.from_json(
        ...     {"layer_indices": [6, 3], "dim_indices": [64, 128], "pooling": "cls"},
        ...     num_layers=6, hidden_size=128,
        ... )
        >>> grid.layer_indices, grid.dim_indices, grid.pooling, grid.has_final_norm
        ((3, 6), (128, 64), 'cls', True)
        """
        try:
            layers = tuple(sorted(int(i) for i in data["layer_indices"]))
            dims = tuple(sorted((int(d) for d in data["dim_indices"]), reverse=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise UnsupportedModelError(
                f"{CONFIG_FILE} needs integer lists layer_indices and dim_indices: {exc}"
            ) from exc
        if not layers or layers[0] < 1 or layers[-1] > num_layers:
            raise UnsupportedModelError(
                f"{CONFIG_FILE} layer_indices {list(layers)} must lie in 1..{num_layers}"
            )
        if not dims or dims[-1] < 2 or dims[0] > hidden_size:
            raise UnsupportedModelError(
                f"{CONFIG_FILE} dim_indices {list(dims)} must lie in 2..{hidden_size}"
            )
        for key, expected in (("num_layers", num_layers), ("hidden_size", hidden_size)):
            if key in data and int(data[key]) != expected:
                raise UnsupportedModelError(
                    f"{CONFIG_FILE} says {key}={data[key]} but config.json has {expected}"
                )
        # The trainer writes "pooling_strategy"; accept the short name too.
        pooling = str(data.get("pooling_strategy", data.get("pooling", "cls")))
        if pooling not in _POOLINGS:
            raise UnsupportedModelError(f"{CONFIG_FILE} pooling {pooling!r} not in {_POOLINGS}")
        return cls(layers, dims, pooling, bool(data.get("has_final_norm", True)))

    def check(self, layer: int, dim: int) -> None:
        """Raise :class:`InvalidInputError` unless ``(layer, dim)`` is on the grid."""
        if layer not in self.layer_indices:
            raise InvalidInputError(
                f"layer={layer} is not an exit of this model; use one of {list(self.layer_indices)}"
            )
        if dim not in self.dim_indices:
            raise InvalidInputError(
                f"dim={dim} is not a head width of this model; use one of {list(self.dim_indices)}"
            )


class MatryoshkaHead(nn.Module):
    """``Linear(d, d // 2) → GELU → Linear(d // 2, 1)`` on the first ``d`` values.

    Submodules are numbered as in the heads file (``0`` and ``3``; ``2`` was a dropout), so
    the file's ``"{layer}.{dim}."`` entries load as they are. ``forward``: fp32 ``[B, H]``
    → fp32 ``[B]`` logits.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Identity(), nn.Linear(dim // 2, 1)
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(pooled.narrow(1, 0, self.dim))
        return out.select(1, 0)


def load_heads(path: Path) -> dict[str, torch.Tensor]:
    """Read ``classification_heads.pt`` as a flat ``{key: tensor}`` dict on the CPU.

    Only ``torch.load(weights_only=True)`` is used: a file that needs arbitrary pickled
    objects (code) is refused with :class:`UnsupportedModelError`, never executed.
    """
    if not path.is_file():
        raise UnsupportedModelError(f"{path} is missing")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise UnsupportedModelError(
            f"{path} is not a plain tensor file loadable with weights_only=True "
            f"(refusing to unpickle arbitrary objects): {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnsupportedModelError(f"{path} does not hold a dict of tensors")
    return dict(state)


def build_head(
    state: Mapping[str, torch.Tensor], layer: int, dim: int, *, device: torch.device
) -> MatryoshkaHead:
    """The fp32 ``(layer, dim)`` head of a heads state dict, on ``device``."""
    prefix = f"{layer}.{dim}."
    names = ("0.weight", "0.bias", "3.weight", "3.bias")
    missing = [prefix + n for n in names if prefix + n not in state]
    if missing:
        raise UnsupportedModelError(f"{HEADS_FILE} lacks {missing}")
    with torch.device("meta"):
        head = MatryoshkaHead(dim)
    weights = {n: state[prefix + n].to(device=device, dtype=torch.float32) for n in names}
    try:
        head.layers.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise UnsupportedModelError(
            f"{HEADS_FILE} head {layer}.{dim} has wrong shapes: {exc}"
        ) from exc
    return head.eval()


def exit_features(
    hidden: torch.Tensor,
    batch: PackedBatch,
    pooling: str,
    norm: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """Pool hidden states ``[T, H]`` of one exit to fp32 ``[B, H]``, normalising per token.

    ``norm`` (a per-token LayerNorm, or ``None``) is applied before pooling; for ``"cls"``
    and ``"last"`` only the pooled rows are normalised, which is the same thing.

    >>> b = pack_sequences([[1, 2], [3]], torch.device("cpu"))
    >>> h = torch.tensor([[1.0], [3.0], [5.0]])
    >>> exit_features(h, b, "cls", None).tolist(), exit_features(h, b, "last", None).tolist()
    ([[1.0], [5.0]], [[3.0], [5.0]])
    >>> exit_features(h, b, "mean", lambda x: 2 * x).tolist()
    [[4.0], [10.0]]
    """
    if pooling == "mean":
        return mean_pool(hidden if norm is None else norm(hidden.float()), batch)
    if pooling == "cls":
        rows = cls_pool(hidden, batch)
    elif pooling == "last":
        rows = hidden.index_select(0, batch.ends).float()
    else:
        raise InvalidInputError(f"pooling {pooling!r} is not one of {_POOLINGS}")
    return rows if norm is None else norm(rows)


class MatryoshkaPairClassifier:
    """A :class:`~rerank_plugins.local.cross_encoder.PairClassifier` for one exit ``(layer, dim)``.

    Runs the native packed ModernBERT trunk for the first ``layer`` layers only (the later
    layers are never executed), then the ``(layer, dim)`` head; ``logits`` gives fp32 CPU
    ``[B, 1]``. ``layer``/``dim`` default to the full model (deepest exit, widest head).
    """

    padded = False
    num_labels = 1

    def __init__(
        self,
        model: ModernBert,
        grid: MatryoshkaConfig,
        heads: Mapping[str, torch.Tensor],
        *,
        device: torch.device,
        layer: int | None = None,
        dim: int | None = None,
    ) -> None:
        """Assemble from a built encoder (e.g. ``build_modernbert``), the exit grid and the
        heads state dict."""
        self.grid = grid
        self.layer = grid.layer_indices[-1] if layer is None else int(layer)
        self.dim = grid.dim_indices[0] if dim is None else int(dim)
        grid.check(self.layer, self.dim)
        self.device = device
        self.head = build_head(heads, self.layer, self.dim, device=device)
        self.model = model
        # final_norm before the heads of layers below the last; the last reads the raw
        # state (module docstring). has_final_norm=false: no normalisation anywhere.
        self.normalised = grid.has_final_norm and self.layer < model.spec.num_layers

    @classmethod
    def from_checkpoint(
        cls,
        directory: Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        layer: int | None = None,
        dim: int | None = None,
        backend: str = "auto",
        config: Mapping[str, Any] | None = None,
    ) -> MatryoshkaPairClassifier:
        """Load a checkpoint directory (encoder, ``matryoshka_config.json``, heads file)."""
        directory = Path(directory)
        cfg = dict(config) if config is not None else read_json(directory / "config.json")
        spec = ModernBertSpec.from_config(cfg)
        # The exit and the heads are checked before the (large) encoder weights are read.
        grid = MatryoshkaConfig.from_json(
            read_json(directory / CONFIG_FILE),
            num_layers=spec.num_layers,
            hidden_size=spec.hidden_size,
        )
        layer = grid.layer_indices[-1] if layer is None else int(layer)
        dim = grid.dim_indices[0] if dim is None else int(dim)
        grid.check(layer, dim)
        heads = load_heads(directory / HEADS_FILE)
        model = load_modernbert(directory, device=device, dtype=dtype, backend=backend, config=cfg)
        return cls(model, grid, heads, device=device, layer=layer, dim=dim)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's ``final_norm`` computed in fp32 (its weights may be bf16)."""
        ln = self.model.trunk.final_norm
        bias = None if ln.bias is None else ln.bias.float()
        return F.layer_norm(x.float(), ln.normalized_shape, ln.weight.float(), bias, ln.eps)

    def exit_logits(self, batch: PackedBatch) -> torch.Tensor:
        """Relevance logits fp32 ``[B]`` (on the model's device) for a packed batch."""
        hidden = self.model.trunk.encode(batch, num_layers=self.layer, final_norm=False)
        norm = self._final_norm if self.normalised else None
        result: torch.Tensor = self.head(exit_features(hidden, batch, self.grid.pooling, norm))
        return result

    def logits(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        packed = pack_sequences([p.ids for p in batch], self.device)
        with torch.inference_mode():
            return self.exit_logits(packed).unsqueeze(1).float().cpu()


class MatryoshkaScorer(CrossEncoderScorer):
    """Scores documents with a 2D-Matryoshka reranker at one exit ``(layer, dim)``.

    ``layer`` must be one of the checkpoint's ``layer_indices`` (default: the last layer)
    and ``dim`` one of its ``dim_indices`` (default: the full width). With ``layer=L`` only
    the first ``L`` encoder layers run, so cost falls about in proportion to ``L``; ``dim``
    only picks a smaller head. Scores are ``sigmoid(logit)`` (``output="probability"``) or
    the raw logit; the window is the encoder's (32768 tokens for the published model).

    A **cascade** (``exit_layer=E, keep=K``, both or neither): every document runs the
    first ``E`` layers (``E`` an exit of the grid, below ``layer``) and is scored by the
    ``(E, dim)`` head; the ``K`` best continue from their layer-``E`` hidden states (no
    recomputation) to ``layer`` and get its score. Their scores carry ``stage=1``, the
    others ``stage=0`` with the exit score, and :func:`~rerank_plugins.ranking.rank` puts
    every stage-1 document first. ``score_pairs`` takes its pairs as one candidate list.
    Other options as :class:`~rerank_plugins.local.cross_encoder.CrossEncoderScorer`.
    """

    @checked_options
    @guard_checkpoint_init
    def __init__(
        self,
        model: str | Path,
        *,
        layer: int | None = None,
        dim: int | None = None,
        exit_layer: int | None = None,
        keep: int | None = None,
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
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        show_progress: bool | None = False,
        cache: bool = True,
    ) -> None:
        self._exit = (layer, dim)
        if (exit_layer is None) != (keep is None):
            raise InvalidInputError("a cascade needs both exit_layer and keep")
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
            show_progress=show_progress,
            cache=bool(cache),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        self._setup(model, options, output=output, engine="native")
        assert isinstance(self.classifier, MatryoshkaPairClassifier)
        self.layer = self.classifier.layer
        self.dim = self.classifier.dim
        self.keep = keep
        self.exit_layer = exit_layer
        self.cascade = None if keep is None else self._cascade(exit_layer, keep)

    def _cascade(self, exit_layer: int | None, keep: int) -> ExitCascade:
        from rerank_plugins.local.matryoshka_cascade import ExitCascade

        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise InvalidInputError(f"keep must be a positive int, got {keep!r}")
        assert isinstance(self.classifier, MatryoshkaPairClassifier)
        c = self.classifier
        grid = c.grid
        if exit_layer not in grid.layer_indices or exit_layer >= self.layer:
            below = [e for e in grid.layer_indices if e < self.layer]
            raise InvalidInputError(
                f"exit_layer={exit_layer} must be an exit below layer={self.layer}; use one "
                f"of {below}"
            )
        head = build_head(
            load_heads(self.directory / HEADS_FILE), exit_layer, self.dim, device=self.device
        )
        exit_norm = c._final_norm if grid.has_final_norm else None  # exit_layer < the last

        def exit_readout(states: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
            result: torch.Tensor = head(exit_features(states, batch, grid.pooling, exit_norm))
            return result

        def final_readout(states: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
            norm = c._final_norm if c.normalised else None
            result: torch.Tensor = c.head(exit_features(states, batch, grid.pooling, norm))
            return result

        return ExitCascade(
            c.model.trunk,
            device=self.device,
            exit_layer=exit_layer,
            layer=self.layer,
            exit_readout=exit_readout,
            final_readout=final_readout,
        )

    @property
    def scores_whole_list(self) -> bool:
        """True for a cascade: a document's score depends on the other candidates (a
        server runs each request's documents together, alone)."""
        return self.cascade is not None

    def score_batch(
        self, pairs: Sequence[EncodedPair | ChunkedPair], *, raw: bool = False
    ) -> list[Score]:
        if self.cascade is None:
            return super().score_batch(pairs, raw=raw)
        return self.score_pairs(pairs, raw=raw)  # the pairs are one candidate list

    def score_pairs(
        self, pairs: Sequence[EncodedPair | ChunkedPair], *, raw: bool = False
    ) -> list[Score]:
        if self.cascade is None or not pairs:
            return super().score_pairs(pairs, raw=raw)
        return self.cascade.score(
            pairs,
            keep=self.keep or len(pairs),
            batch_tokens=self.batch_tokens,
            value=(lambda x: x) if raw else self._value,
            kind="logit" if raw else self.output,
        )

    def _weights_key(self) -> tuple[Any, ...]:
        return (MatryoshkaScorer, *self._exit)

    def _score_options(self) -> dict[str, object]:
        return {**super()._score_options(), "layer": self.layer, "dim": self.dim}

    def _load_classifier(self, engine: str) -> MatryoshkaPairClassifier:
        if self.quantize is not None:  # never run a mode silently as another one
            raise InvalidInputError(
                f"dtype={self.quantize!r} is available for CrossEncoderScorer's ModernBERT and "
                "GTE engines, not for MatryoshkaScorer; use 'float32' or 'bfloat16'"
            )
        layer, dim = self._exit
        return MatryoshkaPairClassifier.from_checkpoint(
            self.directory,
            device=self.device,
            dtype=self.dtype,
            layer=layer,
            dim=dim,
            config=self.config,
        )

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "layer": self.layer,
            "dim": self.dim,
            **({} if self.keep is None else {"exit_layer": self.exit_layer, "keep": self.keep}),
            "device": str(self.device),
            "max_length": self.max_length,
        }
