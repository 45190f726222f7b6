"""Native ModernBERT: the trunk, its heads and a packed cross-encoder classifier.

Loads Hugging Face ModernBERT checkpoints (``ModernBertForSequenceClassification``,
``ModernBertForMaskedLM``, bare ``ModernBertModel``) straight from safetensors and
reproduces transformers' forward on packed variable-length batches (``PackedBatch``):

- pre-norm layers without biases (unless the config asks for them), LayerNorm eps
  ``norm_eps``; layer 0 has no ``attn_norm``;
- ``attn.Wqkv`` packs ``[q | k | v]``; ``mlp.Wi`` packs ``[input | gate]`` and the MLP
  computes ``Wo(act(input) * gate)``;
- layer ``i`` is global when ``i % global_attn_every_n_layers == 0`` (or as
  ``layer_types`` says), else local with keys ``|i - j| <= local_attention // 2``;
- RoPE with ``global_rope_theta`` on global and ``local_rope_theta`` on local layers,
  positions restarting at 0 for each sequence;
- ``final_norm`` after the last layer run; pooling ``mean`` (every real token, CLS and
  SEP included) or ``cls``; head ``dense → act → norm``, then ``classifier`` (masked LM:
  the tied ``decoder`` with its bias).

Precision: the load dtype (bf16 by default on CUDA, fp32 on CPU) with fp32 RoPE tables
and softmax; pooling and heads in fp32. Large CPU forwards fuse each layer's elementwise
steps (:mod:`~rerank_plugins.local.engine.modernbert_fused`, the same maths); short eager
ones run on one intra-op thread (:func:`~rerank_plugins.local.engine.threads.forward_threads`).

Reuse: :meth:`ModernBertTrunk.encode` returns hidden states ``[T, hidden]`` (ColBERT
projects them); ``num_layers=L`` runs only the first ``L`` layers (Matryoshka early exit).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins.errors import CheckpointError, UnsupportedModelError
from rerank_plugins.local.bounds import bounded_config
from rerank_plugins.local.checkpoint import config_float, config_int, load_state_dict, read_json
from rerank_plugins.local.engine.attention import (
    Backends,
    attention,
    choose_backends,
    contiguous,
)
from rerank_plugins.local.engine.fused import compile_mode, worth_fusing
from rerank_plugins.local.engine.modernbert_fused import FusionGate, fused_layer
from rerank_plugins.local.engine.packing import PackedBatch, pack_sequences
from rerank_plugins.local.engine.precision import add_linear, prepare_cpu_linears
from rerank_plugins.local.engine.rope import apply_rotary, default_inv_freq, rotary_cos_sin
from rerank_plugins.local.engine.threads import SERIAL_WORK, forward_threads, layer_work
from rerank_plugins.local.tokenization import EncodedPair
from rerank_plugins.scoring import preemption_point

__all__ = [
    "ModernBert",
    "ModernBertPairClassifier",
    "ModernBertSpec",
    "ModernBertTrunk",
    "activation",
    "build_modernbert",
    "cls_pool",
    "load_modernbert",
    "mean_pool",
]

logger = logging.getLogger(__name__)

Layout = Literal["seq-cls", "mlm", "bare"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU, as transformers' "gelu"
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a config names (``"gelu"`` is the exact erf form)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise UnsupportedModelError(
            f"activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
        ) from None


@dataclass(frozen=True)
class ModernBertSpec:
    """The shape of a ModernBERT checkpoint, read from its ``config.json``.

    ``windows[i]`` is ``None`` for a global layer and the half-window ``w`` (keys with
    ``|i - j| <= w``) for a local one; ``thetas[i]`` is layer ``i``'s RoPE base.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    windows: tuple[int | None, ...]
    thetas: tuple[float, ...]
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_activation: str = "gelu"
    classifier_activation: str = "gelu"
    classifier_pooling: str = "cls"
    classifier_bias: bool = False
    decoder_bias: bool = True
    max_position_embeddings: int = 8192

    @property
    def num_layers(self) -> int:
        return len(self.windows)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModernBertSpec:
        """Read both config styles: transformers 4.x (``global_attn_every_n_layers``,
        ``global_rope_theta``, ``local_rope_theta``) and 5.x (``layer_types``,
        ``rope_parameters``)."""
        if config.get("model_type", "modernbert") != "modernbert":
            raise UnsupportedModelError(f"not a ModernBERT config: {config.get('model_type')!r}")
        hidden = config_int(config, "hidden_size", 768)
        heads = config_int(config, "num_attention_heads", 12)
        if hidden % heads:
            raise UnsupportedModelError(f"hidden_size {hidden} is not a multiple of {heads} heads")
        n_layers = config_int(config, "num_hidden_layers", 22)
        types = config.get("layer_types")
        if types is None:
            every = config_int(config, "global_attn_every_n_layers", 3)
            types = [
                "full_attention" if i % every == 0 else "sliding_attention" for i in range(n_layers)
            ]
        if (
            not isinstance(types, list)
            or len(types) != n_layers
            or not all(t in ("full_attention", "sliding_attention") for t in types)
        ):
            raise CheckpointError(
                f"config.json: layer_types must list {n_layers} of 'full_attention' / "
                f"'sliding_attention', got {str(types)[:200]}",
                path="config.json",
            )
        if config.get("rope_scaling"):
            raise UnsupportedModelError("ModernBERT with rope_scaling is not supported natively")
        params = config.get("rope_parameters") or {}
        if not isinstance(params, dict):
            raise CheckpointError(f"config.json: rope_parameters {params!r} is not an object")
        theta = {
            "full_attention": config_float(config, "global_rope_theta", 160_000.0),
            "sliding_attention": config_float(config, "local_rope_theta", 10_000.0),
        }
        for kind in theta:
            p = params.get(kind) or {}
            if not isinstance(p, dict):
                raise CheckpointError(f"config.json: rope_parameters.{kind} is not an object")
            if p.get("rope_type", "default") != "default":
                raise UnsupportedModelError(f"ModernBERT {kind} RoPE type {p['rope_type']!r}")
            theta[kind] = config_float(p, "rope_theta", theta[kind])
        # local_attention is the full window (keys within +-local_attention/2); a negative
        # or zero one would silently change every local layer's scores.
        half = config_int(config, "local_attention", 128, minimum=2) // 2
        pooling = str(config.get("classifier_pooling", "cls"))
        if pooling not in ("cls", "mean"):
            raise UnsupportedModelError(f"classifier_pooling {pooling!r} is not 'cls' or 'mean'")
        spec = cls(
            vocab_size=config_int(config, "vocab_size", 50368),
            hidden_size=hidden,
            intermediate_size=config_int(config, "intermediate_size", 1152),
            num_heads=heads,
            windows=tuple(None if t == "full_attention" else half for t in types),
            thetas=tuple(theta[t] for t in types),
            norm_eps=config_float(config, "norm_eps", 1e-5),
            norm_bias=bool(config.get("norm_bias", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            hidden_activation=str(config.get("hidden_activation", "gelu")),
            classifier_activation=str(config.get("classifier_activation", "gelu")),
            classifier_pooling=pooling,
            classifier_bias=bool(config.get("classifier_bias", False)),
            decoder_bias=bool(config.get("decoder_bias", True)),
            max_position_embeddings=config_int(config, "max_position_embeddings", 8192),
        )
        activation(spec.hidden_activation)  # fail at load time, not at the first forward
        activation(spec.classifier_activation)
        return spec


# --- modules (parameter names follow the checkpoint keys) ----------------------------


class _Embeddings(nn.Module):
    def __init__(self, spec: ModernBertSpec) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=spec.norm_bias)


class _Attention(nn.Module):
    def __init__(self, spec: ModernBertSpec) -> None:
        super().__init__()
        self.Wqkv = nn.Linear(spec.hidden_size, 3 * spec.hidden_size, bias=spec.attention_bias)
        self.Wo = nn.Linear(spec.hidden_size, spec.hidden_size, bias=spec.attention_bias)


class _MLP(nn.Module):
    def __init__(self, spec: ModernBertSpec) -> None:
        super().__init__()
        self.Wi = nn.Linear(spec.hidden_size, 2 * spec.intermediate_size, bias=spec.mlp_bias)
        self.Wo = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.mlp_bias)


class _Layer(nn.Module):
    def __init__(self, spec: ModernBertSpec, index: int) -> None:
        super().__init__()
        ln = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=spec.norm_bias)
        # Layer 0 reads the (already normalised) embeddings: it has no attn_norm.
        self.attn_norm: nn.LayerNorm | None = ln if index > 0 else None
        self.attn = _Attention(spec)
        self.mlp_norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=spec.norm_bias)
        self.mlp = _MLP(spec)


class ModernBertTrunk(nn.Module):
    """The ModernBERT encoder (``ModernBertModel``) on packed batches.

    Parameters are named as the checkpoint keys without the ``model.`` prefix. ``backend``
    is the attention backend, one name or a
    :class:`~rerank_plugins.local.engine.attention.Backends` pair for global and local layers
    (see :func:`~rerank_plugins.local.engine.attention.choose_backends`).

    Code in :meth:`encode_exits` runs on CUDA as it is traced in CI (fake CUDA tensors):
    no host synchronisation, and no Python indexing of device tensors (``narrow``,
    ``select``, ``index_select`` instead).
    """

    def __init__(self, spec: ModernBertSpec, *, backend: str | Backends = "sdpa") -> None:
        super().__init__()
        self.spec = spec
        self.backends = Backends.of(backend)
        self.embeddings = _Embeddings(spec)
        self.layers = nn.ModuleList(_Layer(spec, i) for i in range(spec.num_layers))
        self.final_norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=spec.norm_bias)
        self._act = activation(spec.hidden_activation)
        with torch.device("cpu"):  # fp32 host tables, even when the modules are built on "meta"
            self._inv_freq = {t: default_inv_freq(spec.head_dim, t) for t in set(spec.thetas)}
        self.fusion = FusionGate(self)

    def encode(
        self,
        batch: PackedBatch,
        *,
        num_layers: int | None = None,
        final_norm: bool = True,
        backend: str | Backends | None = None,
    ) -> torch.Tensor:
        """Token hidden states ``[T, hidden]`` after the first ``num_layers`` layers (all by
        default), with ``final_norm`` applied unless ``final_norm=False``. Layers past
        ``num_layers`` are not run."""
        return self.encode_exits(
            batch,
            [self.spec.num_layers if num_layers is None else num_layers],
            final_norm=final_norm,
            backend=backend,
        )[0]

    def encode_exits(
        self,
        batch: PackedBatch,
        exits: Sequence[int],
        *,
        final_norm: bool = True,
        backend: str | Backends | None = None,
        start: int = 0,
        hidden: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states ``[T, hidden]`` after each depth in ``exits`` (1..num_layers), from
        one pass that stops at the deepest exit.

        With ``hidden`` (raw states ``[T, hidden]`` after the first ``start`` layers, for the
        same ``batch``) the pass resumes at layer ``start`` instead of embedding the ids:
        a cascade continues documents from an early exit without recomputing it."""
        if hidden is None and start != 0:
            raise ValueError("start > 0 needs the hidden states to resume from")
        if not exits or min(exits) <= start or max(exits) > self.spec.num_layers:
            raise ValueError(
                f"exits must lie in {start + 1}..{self.spec.num_layers}, got {list(exits)}"
            )
        backends = self.backends if backend is None else Backends.of(backend)
        spec = self.spec
        t = batch.num_tokens
        heads, head_dim = spec.num_heads, spec.head_dim
        if hidden is None:
            x = self.embeddings.norm(self.embeddings.tok_embeddings(batch.input_ids))
        else:
            x = hidden
        tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        wanted = set(exits)
        found: dict[int, torch.Tensor] = {}
        fuse = worth_fusing(x.device, t, spec.hidden_size) and self.fusion.allows(t)
        act, eps = self._act, spec.norm_eps
        work = layer_work(t, spec.hidden_size, spec.intermediate_size)
        with forward_threads(SERIAL_WORK if fuse else work):  # fused: the count compiled for
            for i in range(start, max(exits)):
                preemption_point()
                layer: Any = self.layers[i]
                theta, window = spec.thetas[i], spec.windows[i]
                if theta not in tables:
                    tables[theta] = rotary_cos_sin(self._inv_freq[theta], batch.position_ids)
                cos, sin = tables[theta]
                attend = functools.partial(
                    attention,
                    batch=batch,
                    window=window,
                    backend=backends.for_window(window),
                    scale=head_dim**-0.5,
                )
                if fuse:  # the CPU: the same maths, elementwise passes fused (engine/fused.py)
                    x = fused_layer(layer, x, cos, sin, attend, heads=heads, act=act, eps=eps)
                else:
                    h = x if layer.attn_norm is None else layer.attn_norm(x)
                    qkv = layer.attn.Wqkv(h).view(t, 3, heads, head_dim)
                    # q and k rotate in one pass: [T, 2, H, D] viewed as [T, 2H, D].
                    qk = apply_rotary(qkv.narrow(1, 0, 2).reshape(t, 2 * heads, head_dim), cos, sin)
                    v = contiguous(qkv.select(1, 2))
                    a = attend(qk.narrow(1, 0, heads), qk.narrow(1, heads, heads), v)
                    x = add_linear(x, a.reshape(t, spec.hidden_size), layer.attn.Wo)
                    gate_in, gate = layer.mlp.Wi(layer.mlp_norm(x)).chunk(2, dim=-1)
                    x = add_linear(x, self._act(gate_in) * gate, layer.mlp.Wo)
                if i + 1 in wanted:
                    found[i + 1] = self.final_norm(x) if final_norm else x
        return [found[e] for e in exits]


class PredictionHead(nn.Module):
    """``head``: dense → activation → LayerNorm, shared by the classifier and the MLM head."""

    def __init__(self, spec: ModernBertSpec) -> None:
        super().__init__()
        self.dense = nn.Linear(spec.hidden_size, spec.hidden_size, bias=spec.classifier_bias)
        self.norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, bias=spec.norm_bias)
        self._act = activation(spec.classifier_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self._act(self.dense(x)))


# --- pooling (pure) -------------------------------------------------------------------


def mean_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Mean over every token of each sequence: ``[T, H]`` → fp32 ``[B, H]``.

    >>> b = pack_sequences([[1, 2], [3]], torch.device("cpu"))
    >>> mean_pool(torch.tensor([[1.0], [3.0], [5.0]]), b).tolist()
    [[2.0], [5.0]]
    """
    # Sequences are contiguous on the packed axis: one reduction per sequence.
    sums = torch.stack([part.sum(0, dtype=torch.float32) for part in hidden.split(batch.lengths)])
    counts = torch.tensor(batch.lengths, dtype=torch.float32).to(hidden.device, non_blocking=True)
    return sums / counts.unsqueeze(1)


def cls_pool(hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Each sequence's first token: ``[T, H]`` → fp32 ``[B, H]``.

    >>> b = pack_sequences([[1, 2], [3]], torch.device("cpu"))
    >>> cls_pool(torch.tensor([[1.0], [3.0], [5.0]]), b).tolist()
    [[1.0], [5.0]]
    """
    return hidden.index_select(0, batch.starts).float()


# --- loading --------------------------------------------------------------------------


@dataclass
class ModernBert:
    """A loaded checkpoint: the trunk and whichever heads the checkpoint has.

    ``layout`` is ``"seq-cls"`` (``head`` + ``classifier``), ``"mlm"`` (``head`` +
    ``decoder``, tied to the token embeddings when the checkpoint does not store it) or
    ``"bare"`` (no heads). Heads are fp32 on the trunk's device.
    """

    spec: ModernBertSpec
    trunk: ModernBertTrunk
    layout: Layout
    head: PredictionHead | None = None
    classifier: nn.Linear | None = None
    decoder: nn.Linear | None = None

    @property
    def device(self) -> torch.device:
        return self.trunk.final_norm.weight.device

    def pool(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The checkpoint's ``classifier_pooling`` over ``hidden [T, H]`` → fp32 ``[B, H]``."""
        if self.spec.classifier_pooling == "mean":
            return mean_pool(hidden, batch)
        return cls_pool(hidden, batch)

    def classify(self, batch: PackedBatch) -> torch.Tensor:
        """Sequence-classification logits, fp32 ``[B, num_labels]``."""
        if self.head is None or self.classifier is None:
            raise UnsupportedModelError("this ModernBERT checkpoint has no classification head")
        pooled = self.pool(self.trunk.encode(batch), batch)
        result: torch.Tensor = self.classifier(self.head(pooled))
        return result

    def masked_lm_logits(self, batch: PackedBatch, positions: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits at the packed token indices ``positions [N]`` only → fp32 ``[N, V]``."""
        if self.head is None or self.decoder is None:
            raise UnsupportedModelError("this ModernBERT checkpoint has no masked-LM head")
        hidden = self.trunk.encode(batch).index_select(0, positions.to(self.device))
        result: torch.Tensor = self.decoder(self.head(hidden.float()))
        return result


def _split_keys(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trunk keys without ``model.``, head keys) of a checkpoint in any of the layouts."""
    prefixed = any(k.startswith("model.") for k in state)
    trunk: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if prefixed:
            if key.startswith("model."):
                trunk[key.removeprefix("model.")] = value
            else:
                heads[key] = value
        elif key.startswith(("embeddings.", "layers.", "final_norm.")):
            trunk[key] = value
        else:
            heads[key] = value
    return trunk, heads


def _load_module(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing:
        raise UnsupportedModelError(f"the checkpoint's {what} lacks {missing[:5]}")
    if unexpected:
        logger.debug("ignoring %d unexpected %s keys: %s", len(unexpected), what, unexpected[:5])
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)
    except RuntimeError as exc:  # shape mismatches between config.json and the weights
        raise UnsupportedModelError(
            f"the checkpoint's {what} does not match config.json: {exc}"
        ) from exc


def load_modernbert(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    config: Mapping[str, Any] | None = None,
) -> ModernBert:
    """Load a ModernBERT checkpoint directory (``config.json`` + ``*.safetensors``).

    Works for the seq-cls, masked-LM and bare layouts, with or without the ``model.``
    prefix. The trunk gets ``dtype`` (bf16 on GPU, fp32 on CPU), the heads fp32. ``backend``
    is the attention backend (``"auto"`` picks it for ``device`` and ``dtype``).
    """
    compile_mode()  # a bad $RERANK_PLUGINS_COMPILE fails here, not at the first forward
    directory = Path(directory)
    cfg = dict(config) if config is not None else read_json(directory / "config.json")
    cfg = bounded_config(directory, cfg)  # before any module is built
    return build_modernbert(
        cfg, load_state_dict(directory), device=device, dtype=dtype, backend=backend
    )


def _placed(
    state: Mapping[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Floating-point tensors moved to ``device`` in ``dtype`` (others keep their dtype)."""
    return {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in state.items()
    }


def build_modernbert(
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str | Backends = "auto",
) -> ModernBert:
    """A :class:`ModernBert` from a ``config.json`` dict and a state dict (any layout).

    Tensors are moved to ``device`` (trunk in ``dtype``, heads fp32) before the modules,
    built on ``meta``, take them over: no module is ever materialised on the CPU first,
    and a state dict of fake tensors (``FakeTensorMode.from_tensor``) builds a traced
    model on a fake device.
    """
    device = torch.device(device)
    spec = ModernBertSpec.from_config(config)
    trunk_state, head_state = _split_keys(state)
    if not isinstance(backend, Backends):
        backend = choose_backends(device, backend, dtype=dtype)
    with torch.device("meta"):
        trunk = ModernBertTrunk(spec, backend=backend)
    _load_module(trunk, _placed(trunk_state, device, dtype), "encoder")
    trunk.eval()

    model = ModernBert(spec=spec, trunk=trunk, layout="bare")
    if "head.dense.weight" not in head_state:
        return model
    heads = _placed(head_state, device, torch.float32)
    with torch.device("meta"):
        head = PredictionHead(spec)
    _load_module(head, {k.removeprefix("head."): v for k, v in heads.items()}, "head")
    model.head = head.eval()
    if "classifier.weight" in heads:
        with torch.device("meta"):
            classifier = nn.Linear(spec.hidden_size, heads["classifier.weight"].shape[0])
        parts = {k.removeprefix("classifier."): v for k, v in heads.items()}
        _load_module(classifier, parts, "classifier")
        model.classifier = classifier.eval()
        model.layout = "seq-cls"
    elif "decoder.weight" in heads or "decoder.bias" in heads:
        weights = {k.removeprefix("decoder."): v for k, v in heads.items()}
        if "weight" not in weights:  # tied to the token embeddings, often not stored
            tied = trunk_state["embeddings.tok_embeddings.weight"]
            weights["weight"] = tied.to(device=device, dtype=torch.float32)
        with torch.device("meta"):
            decoder = nn.Linear(spec.hidden_size, spec.vocab_size, bias=spec.decoder_bias)
        _load_module(decoder, weights, "decoder")
        model.decoder = decoder.eval()
        model.layout = "mlm"
    return model


# --- the cross-encoder classifier ----------------------------------------------------


class ModernBertPairClassifier:
    """A :class:`~rerank_plugins.local.cross_encoder.PairClassifier` on the native engine.

    Pairs are packed on one token axis (no padding tokens in the linear layers on any
    device; on CPU only global attention pads, within length buckets), so a batch costs
    the sum of its lengths: ``padded = False``.
    """

    padded = False

    def __init__(self, model: ModernBert, *, device: torch.device, name: str = "the model") -> None:
        """Wrap a built model (e.g. :func:`build_modernbert` from a state dict) on ``device``."""
        if model.classifier is None:
            raise UnsupportedModelError(
                f"{name} is a ModernBERT {model.layout} checkpoint without a "
                "classification head; a cross-encoder needs ModernBertForSequenceClassification"
            )
        self.model = model
        self.device = device
        self.num_labels = int(model.classifier.out_features)

    @classmethod
    def from_checkpoint(
        cls,
        directory: Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "auto",
        config: Mapping[str, Any] | None = None,
        quantize: str | None = None,
    ) -> ModernBertPairClassifier:
        """Load a ``ModernBertForSequenceClassification`` checkpoint directory."""
        model = load_modernbert(
            directory, device=device, dtype=dtype, backend=backend, config=config
        )
        # The trunk's linear layers only (int8, or oneDNN-prepacked on CPU); heads stay fp32.
        prepare_cpu_linears(model.trunk.layers, device=device, quantize=quantize)
        return cls(model, device=device, name=str(directory))

    def logits(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        packed = pack_sequences([p.ids for p in batch], self.device)
        with torch.inference_mode():
            return self.model.classify(packed).float().cpu()
