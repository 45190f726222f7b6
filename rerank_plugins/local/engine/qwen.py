"""Native Qwen3 / Qwen2 decoder trunks for yes/no rerankers, on packed causal batches.

Loads ``Qwen3ForCausalLM`` (Qwen3-Reranker) and ``Qwen2ForCausalLM`` (mxbai-rerank-v2)
checkpoints straight from safetensors and reproduces transformers' forward:

- pre-norm layers with RMSNorm (statistics in fp32, eps ``rms_norm_eps``);
- grouped-query attention: ``q_proj``, ``k_proj``, ``v_proj`` (biased on Qwen2; on Qwen3
  all four projections, ``o_proj`` too, when ``attention_bias``), Qwen3's per-head
  ``q_norm``/``k_norm`` before RoPE, RoPE base ``rope_theta`` (rotate-half);
- SwiGLU MLP ``down_proj(silu(gate_proj(x)) * up_proj(x))``;
- ``model.norm`` and the LM head, of which only the rows of the two answer tokens are
  kept (``lm_head.weight`` or, when tied, ``embed_tokens.weight``) and applied at each
  sequence's last position: no ``[tokens x vocab]`` tensor is ever made.

Precision: the trunk runs in the load dtype (bf16 on CUDA, fp32 on CPU; int8 linears on
request) with fp32 RoPE tables, fp32 RMSNorm statistics and fp32 softmax inside the
attention kernels; the final norm and the two-row head run in fp32.

:meth:`QwenReranker.context` runs a prompt prefix once and returns its keys and values;
:meth:`QwenReranker.answer_logits` runs documents after it (see
:mod:`~rerank_plugins.local.engine.causal`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins.errors import CheckpointError, UnsupportedModelError
from rerank_plugins.local.checkpoint import config_float, config_int, load_state_dict, read_json
from rerank_plugins.local.engine.causal import CausalBatch, causal_attention, choose_causal_backend
from rerank_plugins.local.engine.modernbert import _load_module, _placed
from rerank_plugins.local.engine.precision import add_linear, prepare_cpu_linears
from rerank_plugins.local.engine.rope import apply_rotary, default_inv_freq, rotary_cos_sin
from rerank_plugins.local.engine.threads import forward_threads, layer_work
from rerank_plugins.scoring import preemption_point

__all__ = ["Context", "QwenReranker", "QwenSpec", "QwenTrunk", "build_qwen", "load_qwen"]

logger = logging.getLogger(__name__)

Context = list[tuple[torch.Tensor, torch.Tensor]]
"""Keys and values of a prompt prefix, one ``([P, Hkv, D], [P, Hkv, D])`` pair per layer."""

_MODEL_TYPES = ("qwen2", "qwen3")


@dataclass(frozen=True)
class QwenSpec:
    """The shape of a Qwen2/Qwen3 causal LM, read from its ``config.json``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> QwenSpec:
        """Read both config styles: transformers 4.x (``rope_theta``, ``rope_scaling``) and
        5.x (``rope_parameters``). Sliding-window layers and scaled RoPE are refused."""
        model_type = config.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise UnsupportedModelError(f"not a Qwen2/Qwen3 config: model_type {model_type!r}")
        hidden = config_int(config, "hidden_size", 1024)
        heads = config_int(config, "num_attention_heads", 16)
        kv_heads = config_int(config, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise CheckpointError(
                f"config.json: {heads} attention heads are not a multiple of {kv_heads} "
                "key/value heads",
                path="config.json",
            )
        default_head = hidden // heads
        head_dim = (
            config_int(config, "head_dim", default_head) if model_type == "qwen3" else default_head
        )
        if model_type == "qwen2" and hidden % heads:
            raise CheckpointError(f"config.json: hidden_size {hidden} is not a multiple of {heads}")
        if config.get("use_sliding_window"):
            raise UnsupportedModelError(
                "Qwen checkpoints with use_sliding_window are not supported"
            )
        if str(config.get("hidden_act", "silu")) != "silu":
            raise UnsupportedModelError(f"hidden_act {config.get('hidden_act')!r}; Qwen uses silu")
        theta = config_float(config, "rope_theta", 1_000_000.0) if "rope_theta" in config else None
        params = config.get("rope_parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise CheckpointError(f"config.json: rope_parameters {params!r} is not an object")
            if params.get("rope_type", "default") != "default":
                raise UnsupportedModelError(f"RoPE type {params['rope_type']!r} is not supported")
            theta = config_float(params, "rope_theta", theta or 1_000_000.0)
        scaling = config.get("rope_scaling")
        if scaling and (
            not isinstance(scaling, dict)
            or scaling.get("rope_type", scaling.get("type")) != "default"
        ):
            raise UnsupportedModelError(f"rope_scaling {scaling!r} is not supported")
        qwen3 = model_type == "qwen3"
        return cls(
            model_type=str(model_type),
            vocab_size=config_int(config, "vocab_size", 151669),
            hidden_size=hidden,
            intermediate_size=config_int(config, "intermediate_size", 3072),
            num_layers=config_int(config, "num_hidden_layers", 28),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=config_float(config, "rms_norm_eps", 1e-6),
            rope_theta=theta if theta is not None else 1_000_000.0,
            qkv_bias=bool(config.get("attention_bias", False)) if qwen3 else True,
            o_bias=bool(config.get("attention_bias", False)) if qwen3 else False,
            qk_norm=qwen3,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=config_int(config, "max_position_embeddings", 32768),
        )


class RMSNorm(nn.Module):
    """``weight * x / sqrt(mean(x^2) + eps)``, statistics in fp32, as transformers' Qwen."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, spec: QwenSpec) -> None:
        super().__init__()
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.q_proj = nn.Linear(spec.hidden_size, q_size, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(spec.hidden_size, kv_size, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(spec.hidden_size, kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(q_size, spec.hidden_size, bias=spec.o_bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)


class _MLP(nn.Module):
    def __init__(self, spec: QwenSpec) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)


class _Layer(nn.Module):
    def __init__(self, spec: QwenSpec) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = _Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = _MLP(spec)


class QwenTrunk(nn.Module):
    """``Qwen{2,3}Model`` on packed causal batches; parameters named as the checkpoint keys
    without ``model.``.

    Code here runs on CUDA as traced in CI (fake CUDA tensors): no host synchronisation and
    no Python indexing of device tensors.
    """

    def __init__(self, spec: QwenSpec, *, backend: str = "sdpa") -> None:
        super().__init__()
        self.spec = spec
        self.backend = backend
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(_Layer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        with torch.device("cpu"):  # fp32 host table, even when the modules are built on "meta"
            self._inv_freq = default_inv_freq(spec.head_dim, spec.rope_theta)

    def forward_packed(
        self, batch: CausalBatch, *, past: Context | None, keep: bool
    ) -> tuple[torch.Tensor, Context]:
        """Hidden states ``[T, hidden]`` before the final norm, and (``keep=True``) every
        layer's keys and values ``[T, Hkv, D]`` for a later batch to continue."""
        spec = self.spec
        t = batch.packed.num_tokens
        h, hkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
        cos, sin = rotary_cos_sin(self._inv_freq, batch.position_ids)
        x = self.embed_tokens(batch.input_ids)
        kept: Context = []
        for i, module in enumerate(self.layers):
            preemption_point()
            layer: Any = module
            attn: Any = layer.self_attn
            hidden = layer.input_layernorm(x)
            q = attn.q_proj(hidden).view(t, h, d)
            k = attn.k_proj(hidden).view(t, hkv, d)
            v = attn.v_proj(hidden).view(t, hkv, d)
            if attn.q_norm is not None:
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if keep:
                kept.append((k, v))
            a = causal_attention(
                q,
                k,
                v,
                batch,
                past=None if past is None else past[i],
                backend=self.backend,
                scale=d**-0.5,
            )
            x = add_linear(x, a.reshape(t, h * d), attn.o_proj)
            mlp: Any = layer.mlp
            hidden = layer.post_attention_layernorm(x)
            x = add_linear(x, F.silu(mlp.gate_proj(hidden)) * mlp.up_proj(hidden), mlp.down_proj)
        return x, kept


class QwenReranker:
    """A loaded trunk plus the two LM-head rows ``[negative, positive]`` of the answer tokens.

    ``answer_logits`` returns fp32 ``[B, 2]``: the (negative, positive) logits at each
    sequence's last position.
    """

    def __init__(self, spec: QwenSpec, trunk: QwenTrunk, head: torch.Tensor) -> None:
        self.spec = spec
        self.trunk = trunk
        self.head = head  # fp32 [2, hidden]

    @classmethod
    def from_checkpoint(
        cls,
        directory: Path,
        *,
        answer_tokens: tuple[int, int],
        device: torch.device,
        dtype: torch.dtype,
        backend: str = "auto",
        config: Mapping[str, Any] | None = None,
        quantize: str | None = None,
    ) -> QwenReranker:
        """Load a ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM`` checkpoint directory;
        ``quantize="int8"`` makes the trunk's layers int8 (embeddings and head stay)."""
        model = load_qwen(
            directory,
            answer_tokens=answer_tokens,
            device=device,
            dtype=dtype,
            backend=backend,
            config=config,
        )
        # The trunk's linear layers only (int8, or oneDNN-prepacked on CPU); embeddings
        # and the head rows stay.
        prepare_cpu_linears(model.trunk.layers, device=device, quantize=quantize)
        return model

    @property
    def device(self) -> torch.device:
        return self.head.device

    def _work(self, batch: CausalBatch) -> int:
        spec = self.trunk.spec  # the linear maps per layer; q, k, v, out counted as hidden wide
        return layer_work(batch.packed.num_tokens, spec.hidden_size, spec.intermediate_size)

    def context(self, ids: Sequence[int]) -> Context:
        """Run the prompt prefix ``ids`` once; its keys and values for :meth:`answer_logits`."""
        batch = CausalBatch.pack([list(ids)], self.device)
        with torch.inference_mode(), forward_threads(self._work(batch)):
            _, kept = self.trunk.forward_packed(batch, past=None, keep=True)
        return kept

    def answer_logits(
        self, sequences: Sequence[Sequence[int]], *, past: Context | None = None, context: int = 0
    ) -> torch.Tensor:
        """(negative, positive) logits, fp32 ``[len(sequences), 2]`` on the device.

        With ``past`` (the :meth:`context` of ``context`` tokens), the sequences continue
        that prefix: their tokens sit at positions ``context, context + 1, ...``.
        """
        batch = CausalBatch.pack(sequences, self.device, context=context if past else 0)
        with torch.inference_mode(), forward_threads(self._work(batch)):
            hidden, _ = self.trunk.forward_packed(batch, past=past, keep=False)
            last = self.trunk.norm(hidden.index_select(0, batch.ends)).float()
            return last @ self.head.t()


def _head_rows(
    spec: QwenSpec, state: Mapping[str, torch.Tensor], tokens: tuple[int, int]
) -> torch.Tensor:
    """The LM-head rows of ``tokens`` (negative, positive) as fp32 ``[2, hidden]``."""
    name = "lm_head.weight"
    if name not in state:
        if not spec.tie_word_embeddings:
            raise UnsupportedModelError(
                "the checkpoint has no lm_head.weight and tie_word_embeddings is false"
            )
        name = "model.embed_tokens.weight"
    weight = state[name]
    for token in tokens:
        if not 0 <= token < weight.shape[0]:
            raise CheckpointError(f"answer token id {token} is outside the {name} rows")
    return weight.index_select(0, torch.tensor(tokens)).float()


def build_qwen(
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    *,
    answer_tokens: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> QwenReranker:
    """A :class:`QwenReranker` from a ``config.json`` dict and a ``*ForCausalLM`` state dict.

    ``answer_tokens`` are the (negative, positive) token ids whose head rows are kept; the
    rest of the LM head is dropped. Tensors are moved to ``device`` before the modules,
    built on ``meta``, take them over (fake tensors build a traced model on a fake device).
    """
    device = torch.device(device)
    spec = QwenSpec.from_config(config)
    head = _head_rows(spec, state, answer_tokens).to(device)
    trunk_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    with torch.device("meta"):
        trunk = QwenTrunk(spec, backend=choose_causal_backend(device, backend, dtype=dtype))
    unknown = sorted(set(trunk_state) - set(trunk.state_dict()))
    if unknown:  # a weight the forward would ignore (a bias the config does not announce)
        raise UnsupportedModelError(
            f"the checkpoint has weights this {spec.model_type} config does not use: {unknown[:5]}"
        )
    _load_module(trunk, _placed(trunk_state, device, dtype), "decoder")
    trunk.eval()
    return QwenReranker(spec, trunk, head)


def load_qwen(
    directory: str | Path,
    *,
    answer_tokens: tuple[int, int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
    config: Mapping[str, Any] | None = None,
) -> QwenReranker:
    """Load a ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM`` checkpoint directory."""
    directory = Path(directory)
    cfg = dict(config) if config is not None else read_json(directory / "config.json")
    return build_qwen(
        cfg,
        load_state_dict(directory),
        answer_tokens=answer_tokens,
        device=device,
        dtype=dtype,
        backend=backend,
    )
