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

When a trunk starts fusing (:class:`FusionGate`): with ``RERANK_PLUGINS_COMPILE=inline``
(or ``1``) at its first large forward, which compiles every step inline. By default
(``auto``) its large forwards run eagerly until they have done about as much work as
compiling costs (``BACKGROUND_AFTER_WORK``, seconds of CPU), then a background thread
compiles (a small synthetic forward through every fused step); forwards run fused once
that is done. A short job never waits for Inductor (seconds; tens on a cold cache), a
long one or a notebook gets the fast path after a few seconds of work, a server compiles
in its warm-up (:func:`finish_compiling`).
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from rerank_plugins.local.engine import fused
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.local.engine.precision import (
    BF16_FEATURES,
    Int8DynamicLinear,
    add_linear,
    cpu_features,
)

__all__ = ["FusionGate", "finish_compiling", "fused_layer", "int8_attention_dtype"]

logger = logging.getLogger(__name__)

# ``auto`` starts compiling once a trunk's large eager forwards have done this much work
# (tokens x hidden x layers): about 4-6 s of eager CPU time here (fp32 at 22 x 768: 2 s
# per 88M; int8 at 6 x 384: 0.2 s per 12M), about what compiling costs. A job shorter
# than that never compiles (nor waits for a compilation at exit); a longer one pays at
# most about twice what the better choice in hindsight would have.
BACKGROUND_AFTER_WORK = 1 << 28
_EXIT_WAIT_S = 600.0  # at most this long at exit (a cold compilation takes seconds)

_gates: weakref.WeakSet[FusionGate] = weakref.WeakSet()

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


class FusionGate:
    """Whether a trunk's large CPU forwards take the fused steps (module docstring).

    :meth:`allows` is asked once per large forward of ``trunk`` (those
    :func:`~.fused.worth_fusing` picks); compiling runs one small synthetic forward of the
    trunk through every fused step, in a background thread from ``BACKGROUND_AFTER_WORK``
    on.
    """

    def __init__(self, trunk: Any) -> None:
        self._trunk = weakref.ref(trunk)
        self._lock = threading.Lock()
        self._work = 0
        self._unit = trunk.spec.hidden_size * trunk.spec.num_layers
        self._thread: threading.Thread | None = None
        self._ready = False
        _gates.add(self)

    @property
    def ready(self) -> bool:
        """Whether the steps are compiled (large forwards run fused)."""
        return self._ready

    def allows(self, tokens: int) -> bool:
        """Whether this large forward of ``tokens`` tokens runs fused."""
        if self._ready or threading.current_thread() is self._thread:
            return True  # compiled, or the compiling forward itself
        if fused.compile_mode() != "auto":
            return True  # inline or on: the steps compile on this forward
        with self._lock:
            self._work += tokens * self._unit
            if self._work >= BACKGROUND_AFTER_WORK:
                self._start()
        return False

    def finish(self, timeout: float | None = None) -> bool:
        """Compile now if nothing started yet and wait (at most ``timeout`` seconds) until
        done; whether the fused steps are ready."""
        trunk = self._trunk()
        if trunk is None or trunk.final_norm.weight.device.type != "cpu":
            return True  # unloaded, or not a CPU trunk: nothing to compile
        with self._lock:
            self._start()
            thread = self._thread
        assert thread is not None
        thread.join(timeout)
        return self._ready

    def _start(self) -> None:
        if self._thread is None:  # under self._lock
            self._thread = threading.Thread(target=self._run, name="rerank-compile", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            trunk = self._trunk()
            if trunk is None:  # unloaded meanwhile
                return
            half = warm_tokens(trunk.spec.hidden_size) // 2 + 1
            with torch.inference_mode():
                batch = pack_sequences([[0] * half] * 2, trunk.final_norm.weight.device)
                trunk.encode_exits(batch, [trunk.spec.num_layers])
        except Exception as exc:  # a step that fails to compile falls back by itself
            logger.warning(
                "compiling the CPU fast path failed (%s: %s); forwards stay eager",
                type(exc).__name__,
                str(exc)[:200],
            )
        else:
            self._ready = True
            logger.info(
                "CPU fast path compiled in %.1f s: large forwards run fused from now on",
                time.perf_counter() - start,
            )


@atexit.register
def _wait_at_exit() -> None:
    """A compilation still running when the interpreter exits can abort the process
    ("terminate called without an active exception", seen once in nine exits right after
    a compilation started): the exit waits for it, at most one compilation (seconds; the
    result stays in Inductor's on-disk cache for the next process)."""
    running = [g._thread for g in list(_gates) if g._thread is not None and g._thread.is_alive()]
    if running:
        logger.info("waiting for the CPU fast path's compilation to finish before exiting")
    for thread in running:
        thread.join(timeout=_EXIT_WAIT_S)


def warm_tokens(hidden: int) -> int:
    """Tokens of the synthetic forward that compiles a trunk's steps: just over the fusing
    floor (and past ``torch._int_mm``'s minimum of 17 rows)."""
    return max(32, math.ceil(fused.FUSE_MIN_ELEMENTS / hidden))


def finish_compiling(timeout: float | None = None) -> bool:
    """Compile the fast path of every trunk loaded in this process now (if not yet done)
    and wait; whether all are ready. For a server's warm-up and for benchmarks; a no-op
    when the fast path is off."""
    if not fused.fusion_enabled(torch.device("cpu")):
        return True
    return all([gate.finish(timeout) for gate in list(_gates)])
