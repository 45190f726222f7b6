"""One ModernBERT layer on the CPU with its elementwise steps fused (:mod:`.fused`).

The same maths as the eager body of
:meth:`~rerank_plugins.local.engine.modernbert.ModernBertTrunk.encode_exits`; only the
passes between the matrix products are merged:

- float (fp32/bf16, oneDNN-prepacked linears): RoPE with the split of ``[q | k | v]`` in
  one pass, ``act(input) * gate`` in one; LayerNorm is one op already and the residual
  adds stay fused into the GEMMs;
- int8 (:class:`~rerank_plugins.local.engine.precision.Int8DynamicLinear`): every matrix
  product reads int8 rows produced by the pass before it (LayerNorm, RoPE's dequantize,
  the gate, the residual add), so quantizing and rescaling cost no pass of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rerank_plugins.local.engine import fused
from rerank_plugins.local.engine.precision import (
    BF16_FEATURES,
    Int8DynamicLinear,
    add_linear,
    cpu_features,
)

__all__ = ["fused_layer", "int8_attention_dtype"]

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def int8_attention_dtype() -> torch.dtype:
    """The int8 mode's attention precision: bf16 where the CPU multiplies it natively
    (oneDNN's fused bf16 kernel, about 2x its fp32 one), else fp32. Softmax is fp32 in
    both; the fidelity bounds are measured with it (``benchmarks/RESULTS.md``)."""
    return torch.bfloat16 if cpu_features() & BF16_FEATURES else torch.float32


def fused_layer(
    layer: Any,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    attend: Attend,
    *,
    heads: int,
    act: fused.Activation,
    eps: float,
) -> torch.Tensor:
    """``x [T, hidden]`` after ``layer``; ``attend(q, k, v)`` is the layer's attention."""
    t = x.shape[0]
    wqkv, wo, wi, wmo = layer.attn.Wqkv, layer.attn.Wo, layer.mlp.Wi, layer.mlp.Wo
    if not isinstance(wqkv, Int8DynamicLinear):  # fp32 / bf16: RoPE and the gate fused
        h = x if layer.attn_norm is None else layer.attn_norm(x)
        q, k, v = fused.rope_qkv(wqkv(h), cos, sin, heads)
        x = add_linear(x, attend(q, k, v).reshape(t, -1), wo)
        return add_linear(x, fused.act_gate(wi(layer.mlp_norm(x)), act), wmo)
    # int8: each product reads the int8 rows its preceding pass wrote
    norm = layer.attn_norm
    if norm is None:
        xq, xs = fused.quantize_rows(x)
    else:
        xq, xs = fused.norm_quantize(x, norm.weight, norm.bias, eps)
    acc = torch._int_mm(xq, wqkv.weight_t)
    q, k, v = fused.rope_qkv_int8(
        acc, xs, wqkv.weight_scale, wqkv.bias, cos, sin, heads, int8_attention_dtype()
    )
    aq, as_ = fused.quantize_rows(attend(q, k, v).reshape(t, -1))
    acc = torch._int_mm(aq, wo.weight_t)
    mlp_norm = layer.mlp_norm
    x, hq, hs = fused.add_norm_quantize(
        x, acc, as_, wo.weight_scale, wo.bias, mlp_norm.weight, mlp_norm.bias, eps
    )
    acc = torch._int_mm(hq, wi.weight_t)
    zq, zs = fused.act_gate_quantize(acc, hs, wi.weight_scale, wi.bias, act)
    acc = torch._int_mm(zq, wmo.weight_t)
    out: torch.Tensor = fused.add_dequantize(x, acc, zs, wmo.weight_scale, wmo.bias)
    return out
