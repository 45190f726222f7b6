"""Native GTE "new" architecture (gte-multilingual-reranker-base) on the packed engine.

The published checkpoints (``model_type: "new"``, ``NewForSequenceClassification``) ship
only remote code; this module runs them natively from their safetensors. The network, as
the checkpoint's own modeling code defines it:

- embeddings: word (+ token type when ``type_vocab_size > 0``) → LayerNorm; no learned
  positions, RoPE instead;
- ``num_hidden_layers`` post-norm blocks, every one global:
  ``x = attn_ln(x + o_proj(attn(rope(q), rope(k), v)))``,
  ``x = mlp_ln(x + down_proj(act(gate) * up))`` with ``up_gate_proj`` packing
  ``[up | gate]`` (the activation is on the *second* half) and biases everywhere except
  ``up_gate_proj``;
- RoPE in the rotate-half convention with NTK scaling always on when
  ``rope_scaling = {"type": "ntk", "factor": f > 1}``:
  ``inv_freq = (theta * f) ** (-2i / d) / f ** (2 / d)``;
- head: the first token (``<s>``) → ``pooler.dense`` → tanh → ``classifier``.

Tensor names follow the checkpoint (``new.`` prefix, ``classifier`` outside it); they are
accepted without the prefix too, and unpacked ``q_proj/k_proj/v_proj`` are packed on load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins.errors import CheckpointError, UnsupportedModelError
from rerank_plugins.local.checkpoint import config_float, config_int, load_state_dict, read_json
from rerank_plugins.local.engine.attention import attention, choose_backend
from rerank_plugins.local.engine.packing import PackedBatch, pack_sequences
from rerank_plugins.local.engine.precision import prepare_cpu_linears
from rerank_plugins.local.engine.rope import (
    apply_rotary,
    default_inv_freq,
    ntk_inv_freq,
    rotary_cos_sin,
)
from rerank_plugins.local.engine.threads import forward_threads, layer_work
from rerank_plugins.local.tokenization import EncodedPair
from rerank_plugins.scoring import preemption_point

__all__ = [
    "GteNewConfig",
    "GteNewModel",
    "GteNewPairClassifier",
    "build_gte_new",
    "gte_new_inv_freq",
    "load_gte_new",
]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf) GELU, as transformers' ACT2FN["gelu"]
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}

# Buffers some exports saved next to the weights; they carry nothing we need.
_IGNORED_SUFFIXES = ("embeddings.position_ids", "rotary_emb.inv_freq")


@dataclass(frozen=True)
class GteNewConfig:
    """What the forward pass needs from a GTE "new" ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    max_position_embeddings: int
    rope_theta: float
    rope_factor: float | None
    rope_mixed_b: float | None
    num_labels: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> GteNewConfig:
        """Validate a ``config.json`` (with the new-impl defaults for absent fields).

        Raises :class:`UnsupportedModelError` for variants this engine does not run:
        absolute positions, RMSNorm layers, unscaled log-n attention, other RoPE scalings.
        """
        if config.get("model_type") != "new":
            raise UnsupportedModelError(f"not a GTE 'new' config: {config.get('model_type')!r}")
        position = config.get("position_embedding_type", "rope")
        if position != "rope":
            raise UnsupportedModelError(f"GTE 'new' with {position!r} positions is not supported")
        norm = config.get("layer_norm_type", "layer_norm")
        if norm != "layer_norm":
            raise UnsupportedModelError(f"GTE 'new' with {norm!r} layers is not supported")
        # log-n scaling multiplies q by log(len)/log(max_positions); clipped at 1 it is the
        # identity for every length within the window, unclipped we do not implement it.
        if config.get("logn_attention_scale") and not config.get("logn_attention_clip1"):
            raise UnsupportedModelError("GTE 'new' with logn_attention_scale is not supported")
        act = str(config.get("hidden_act", "gelu"))
        if act not in _ACTIVATIONS:
            raise UnsupportedModelError(f"GTE 'new' with hidden_act {act!r} is not supported")
        factor: float | None = None
        mixed_b: float | None = None
        scaling = config.get("rope_scaling")
        if scaling is not None:
            if not isinstance(scaling, dict):
                raise CheckpointError(f"config.json: rope_scaling {scaling!r} is not an object")
            kind = scaling.get("type", scaling.get("rope_type"))
            if kind != "ntk":
                raise UnsupportedModelError(f"GTE 'new' with {kind!r} RoPE scaling is unsupported")
            factor = config_float(scaling, "factor", 1.0)
            mixed_b = (
                None if scaling.get("mixed_b") is None else config_float(scaling, "mixed_b", 1)
            )
        hidden = config_int(config, "hidden_size", 768)
        heads = config_int(config, "num_attention_heads", 12)
        if hidden % heads or (hidden // heads) % 2:
            raise UnsupportedModelError(
                f"hidden_size {hidden} does not split into {heads} even-sized rotary heads"
            )
        labels = config.get("id2label")
        n_labels = len(labels) if isinstance(labels, dict) and labels else 2
        num_labels = config_int(config, "num_labels", n_labels)
        return cls(
            vocab_size=config_int(config, "vocab_size", 30528),
            hidden_size=hidden,
            num_hidden_layers=config_int(config, "num_hidden_layers", 12),
            num_attention_heads=heads,
            intermediate_size=config_int(config, "intermediate_size", 3072),
            type_vocab_size=config_int(config, "type_vocab_size", 1, minimum=0),
            layer_norm_eps=config_float(config, "layer_norm_eps", 1e-12),
            hidden_act=act,
            max_position_embeddings=config_int(config, "max_position_embeddings", 2048),
            rope_theta=config_float(config, "rope_theta", 10000.0),
            rope_factor=factor,
            rope_mixed_b=mixed_b,
            num_labels=num_labels,
        )


def gte_new_inv_freq(config: GteNewConfig) -> torch.Tensor:
    """The RoPE inverse frequencies a GTE "new" checkpoint uses, fp32 ``[head_dim // 2]``.

    The reference code builds its table for ``max_position_embeddings * factor`` positions
    at load time and switches to the NTK frequencies exactly when that exceeds
    ``max_position_embeddings``: so NTK is on for every input whenever ``factor > 1``.
    With ``mixed_b`` the per-frequency "mixed" NTK variant applies instead.
    """
    d = config.head_dim
    factor = config.rope_factor
    if factor is None or factor <= 1.0:
        return default_inv_freq(d, config.rope_theta)
    if config.rope_mixed_b is None:
        return ntk_inv_freq(d, config.rope_theta, factor)
    # mixed NTK: divide frequency m (1-based) by exp(a * m**b), a = ln(f) / (d/2)**b
    a = math.log(factor) / (d / 2) ** config.rope_mixed_b
    m = torch.arange(1, d // 2 + 1, dtype=torch.float32)
    return default_inv_freq(d, config.rope_theta) / torch.exp(a * m**config.rope_mixed_b)


class _Attention(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size)


class _GatedMLP(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.up_gate_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size)


class _Layer(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.config = c
        self.act = _ACTIVATIONS[c.hidden_act]
        self.attention = _Attention(c)
        self.attn_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = _GatedMLP(c)
        self.mlp_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        batch: PackedBatch,
        backend: str,
    ) -> torch.Tensor:
        """Post-norm block on packed hidden states ``x [T, hidden]``."""
        c = self.config
        tokens = x.shape[0]
        qkv = self.attention.qkv_proj(x).view(tokens, 3, c.num_attention_heads, c.head_dim)
        q, k, v = qkv.unbind(1)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        ctx = attention(q, k, v, batch, window=None, backend=backend)
        x = self.attn_ln(x + self.attention.o_proj(ctx.reshape(tokens, c.hidden_size)))
        up, gate = self.mlp.up_gate_proj(x).split(c.intermediate_size, dim=-1)
        out: torch.Tensor = self.mlp_ln(x + self.mlp.down_proj(self.act(gate) * up))
        return out


class _Embeddings(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.token_type_embeddings = (
            nn.Embedding(c.type_vocab_size, c.hidden_size) if c.type_vocab_size > 0 else None
        )
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Encoder(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


class _Trunk(nn.Module):
    def __init__(self, c: GteNewConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)


class GteNewModel(nn.Module):
    """``NewForSequenceClassification`` on packed tokens; module names match the checkpoint.

    ``forward(batch, type_ids, backend=...)`` → fp32 logits ``[B, num_labels]``. Build it
    with :func:`load_gte_new`, which keeps the head and the RoPE frequencies in fp32.
    """

    def __init__(self, config: GteNewConfig) -> None:
        super().__init__()
        self.config = config
        self.new = _Trunk(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", gte_new_inv_freq(config), persistent=False)

    def forward(
        self, batch: PackedBatch, type_ids: torch.Tensor | None, *, backend: str
    ) -> torch.Tensor:
        emb = self.new.embeddings
        x = emb.word_embeddings(batch.input_ids)
        if emb.token_type_embeddings is not None:
            if type_ids is None:
                type_ids = torch.zeros_like(batch.input_ids)
            x = x + emb.token_type_embeddings(type_ids)
        x = emb.LayerNorm(x)
        cos, sin = rotary_cos_sin(self.inv_freq, batch.position_ids)
        c = self.config
        with forward_threads(layer_work(batch.num_tokens, c.hidden_size, c.intermediate_size)):
            for layer in self.new.encoder.layer:
                preemption_point()
                x = layer(x, cos, sin, batch, backend)
        # The head (pooler + classifier) runs in fp32 whatever the trunk's dtype.
        first = x.index_select(0, batch.starts).float()  # <s> of each pair
        pooled = torch.tanh(self.new.pooler.dense(first))
        logits: torch.Tensor = self.classifier(pooled)
        return logits


def _canonical_state(state: Mapping[str, torch.Tensor], config: GteNewConfig) -> dict[str, Any]:
    """Checkpoint tensors renamed to :class:`GteNewModel`'s names (``new.`` prefix added
    when absent, separate ``q/k/v_proj`` packed into ``qkv_proj``, saved buffers dropped)."""
    prefixed = any(k.startswith("new.") for k in state)
    out: dict[str, Any] = {}
    for key, tensor in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        name = key if prefixed or key.startswith("classifier.") else f"new.{key}"
        out[name] = tensor
    for i in range(config.num_hidden_layers):
        p = f"new.encoder.layer.{i}.attention"
        for kind in ("weight", "bias"):
            parts = [f"{p}.{n}_proj.{kind}" for n in "qkv"]
            if all(n in out for n in parts):
                out[f"{p}.qkv_proj.{kind}"] = torch.cat([out.pop(n) for n in parts], dim=0)
    return out


def load_gte_new(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config: Mapping[str, Any] | None = None,
) -> GteNewModel:
    """Load a GTE "new" sequence-classification checkpoint directory.

    The embeddings and layers get ``dtype`` (bf16 on GPU, fp32 on CPU); the pooler,
    classifier and RoPE frequencies stay fp32. Raises :class:`UnsupportedModelError`
    naming the tensors when the weights do not fit ``config.json``.
    """
    directory = Path(directory)
    return build_gte_new(
        config if config is not None else read_json(directory / "config.json"),
        load_state_dict(directory),
        device=device,
        dtype=dtype,
        name=str(directory),
    )


def build_gte_new(
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    name: str = "the state dict",
) -> GteNewModel:
    """A :class:`GteNewModel` from a ``config.json`` dict and a state dict.

    Tensors move to ``device`` before the ``meta``-built modules take them over (layers in
    ``dtype``, pooler/classifier/RoPE in fp32), so fake tensors build a traced model.
    """
    device = torch.device(device)
    spec = GteNewConfig.from_dict(config)
    with torch.device("meta"):
        model = GteNewModel(spec)
    canonical = _canonical_state(state, spec)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    missing = sorted(set(shapes) - set(canonical))
    unexpected = sorted(set(canonical) - set(shapes))
    if missing or unexpected:
        raise UnsupportedModelError(
            f"{name} does not hold a GTE 'new' sequence classifier of this config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    placed: dict[str, torch.Tensor] = {}
    for key, tensor in canonical.items():
        if tuple(tensor.shape) != shapes[key]:
            raise UnsupportedModelError(
                f"{name}: {key} has shape {tuple(tensor.shape)}, config.json implies {shapes[key]}"
            )
        head = key.startswith(("new.pooler.", "classifier."))
        target = torch.float32 if head else dtype
        placed[key] = tensor.to(device, target if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(placed, assign=True)
    model.inv_freq = gte_new_inv_freq(spec).to(device)  # fp32 whatever ``dtype`` is
    return model.eval()


class GteNewPairClassifier:
    """:class:`~rerank_plugins.local.cross_encoder.PairClassifier` for GTE "new" checkpoints.

    Packs a batch into one ``[total_tokens]`` axis with positions restarting per pair and
    runs every layer as global attention within each pair (``window=None``), on the
    backend :func:`choose_backend` picks for the device. ``logits(batch)`` returns a
    float32 CPU tensor ``[len(batch), num_labels]``.
    """

    padded = False  # packed: a batch costs the sum of its lengths (see ModernBERT's)

    def __init__(self, model: GteNewModel, *, device: torch.device, backend: str) -> None:
        """Wrap a built model (e.g. :func:`build_gte_new` from a state dict) on ``device``,
        running attention on ``backend`` (a concrete one: "varlen", "flex" or "sdpa")."""
        self.model = model
        self.device = device
        self.backend = backend
        self.num_labels = self.model.config.num_labels
        # XLM-R gives every token type 0 and the reference code is called without
        # token_type_ids (zeros); only a checkpoint with several types reads them.
        self._uses_type_ids = self.model.config.type_vocab_size > 1

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
    ) -> GteNewPairClassifier:
        """Load a GTE "new" checkpoint directory; ``backend="auto"`` picks the device's."""
        model = load_gte_new(directory, device=device, dtype=dtype, config=config)
        # The encoder's linear layers only (int8, or oneDNN-prepacked on CPU); pooler and
        # head stay fp32.
        prepare_cpu_linears(model.new.encoder, device=device, quantize=quantize)
        return cls(model, device=device, backend=choose_backend(device, backend, dtype=dtype))

    @torch.inference_mode()
    def logits(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        packed = pack_sequences([pair.ids for pair in batch], self.device)
        type_ids = None
        if self._uses_type_ids:
            flat = [t for pair in batch for t in pair.type_ids]
            type_ids = torch.tensor(flat, dtype=torch.long).to(self.device, non_blocking=True)
        out = self.model(packed, type_ids, backend=self.backend)
        return out.float().cpu()
