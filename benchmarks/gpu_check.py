"""One command that measures the GPU path: run it first whenever a GPU is available.

    PYTHONPATH=. python benchmarks/gpu_check.py --out "$OUT"        # a GPU, under 8 minutes
    PYTHONPATH=. python benchmarks/gpu_check.py --smoke --out /tmp/x # CPU, tiny shapes, seconds

No network: every checkpoint is written locally with random weights in the real layout
(``rerank_plugins.testing``); only torch, transformers, sentence-transformers, tokenizers,
safetensors and this repository are used. Writes ``gpu_check.json`` (everything) and
``gpu_check.md`` (the tables) to ``--out`` and prints the tables.

Sections, each guarded (a failure is recorded, the others still run) and each given a
share of the ``--budget`` (seconds; a section that would start too late is skipped):

1. environment: GPU, capability, versions, attention backends this torch offers, and a
   bf16 GEMM peak measured now (8192^3 matmuls): the roofline denominator;
2. parity on the full ModernBERT-base shape (22 layers, hidden 768, random weights):
   native bf16 (auto backend) vs transformers fp32 on the same device over 200 documents
   of mixed length (max |d probability|, Kendall tau, top-10 agreement); native fp32
   (flex, sdpa) vs transformers fp32 (max |d logit|); varlen vs flex vs sdpa in bf16;
3. speed, native vs sentence-transformers ``CrossEncoder`` (bf16, sdpa, its best batch
   size of those tried) vs transformers padded (bf16, sdpa) on (a) 1,000 x 512 tokens,
   (b) 1,000 long-tailed (median ~300, tail to 8,192), (c) one 32,768-token document
   (mmBERT shape: the same trunk with 32,768 positions): docs/s, tokens/s, fraction of
   the measured GEMM peak (FLOPs: :func:`bench_cross_encoder.pair_flops`, useful work
   only: matmuls + attention scores, no padding), peak memory, first-call latency;
4. every attention backend forced (varlen, flex, sdpa) on (b);
5. ColBERT (GTE-ModernColBERT shape): cold encoding tokens/s of 1,000 candidates, warm
   (cached) rerank latency p50 of 20;
6. mmBERT 2D-Matryoshka early exit at layers 3/6/11/22: docs/s against the FLOP prediction;
7. GTE-multilingual shape (GTE "new", 12 layers, hidden 768): native vs transformers
   padded on (b);
8. Qwen3-Reranker-0.6B shape (``Qwen3ForCausalLM``: 28 layers, hidden 1024, 16/8 heads,
   head_dim 128, vocabulary 151,669, tied embeddings; the tiny Qwen BPE tokenizer, so
   lengths are counted in its tokens): ``DecoderScorer`` with the prefix cache on and off
   vs sentence-transformers ``CrossEncoder`` (its causal-LM path, bf16, sdpa) on the same
   checkpoint, pairs/s on long-tailed documents (median ~300 tokens, tail to 8,192), and
   prefix reuse on vs off on short documents behind a ~150-token query. The checkpoint's
   chat template renders the card's prompt, so sentence-transformers scores the same
   prompts (its scores are not compared here; ``bench_decoder.py`` compares them).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmark modules

from bench_cross_encoder import Shape, pair_flops
from harness import Column, command_line, format_table, long_tailed_lengths, machine_line

from rerank_plugins.local.engine import attention as attn
from rerank_plugins.testing import (
    make_colbert_checkpoint,
    make_gte_new_checkpoint,
    make_gte_reference_checkpoint,
    make_matryoshka_checkpoint,
    make_modernbert_checkpoint,
    make_qwen3_reranker_checkpoint,
    random_text,
)

logger = logging.getLogger("gpu_check")

QUERY_WORDS = 9
SPECIALS = 3  # [CLS] q [SEP] d [SEP]

FULL = Shape(layers=22, hidden=768, heads=12, intermediate=1152, vocab=50368)
TINY = Shape(
    layers=4, hidden=32, heads=4, intermediate=48, vocab=320, local_attention=8, global_every=2
)
# gte-multilingual-reranker-base: 12 global layers, hidden 768, intermediate 3072.
GTE_FULL = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
GTE_FULL["intermediate_size"] = 3072
# Qwen/Qwen3-Reranker-0.6B's config.json sizes (transformers' Qwen3Config field names).
QWEN3_FULL: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "max_window_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151669,
    "rope_theta": 1000000,
    "rms_norm_eps": 1e-06,
    "tie_word_embeddings": True,
    "initializer_range": 0.02,
}


@dataclass
class Plan:
    """Sizes of one run: the full GPU plan or the ``--smoke`` one."""

    shape: Shape
    gte: dict[str, Any]
    n_a: int
    len_a: int
    n_b: int
    median_b: int
    longest_b: int
    len_c: int
    n_parity: int
    longest_parity: int
    rounds: int
    st_batch_sizes: tuple[int, ...]
    colbert_docs: int
    colbert_doc_words: tuple[int, int]
    mmbert_docs: int
    gemm: int
    qwen3: dict[str, Any] = field(default_factory=dict)
    qwen3_short_docs: int = 8
    qwen3_st_batch: int = 8


GPU_PLAN = Plan(
    shape=FULL,
    gte=GTE_FULL,
    n_a=1000,
    len_a=512,
    n_b=1000,
    median_b=300,
    longest_b=8192,
    len_c=32768,
    n_parity=200,
    longest_parity=2048,
    rounds=2,
    st_batch_sizes=(32, 128),
    colbert_docs=1000,
    colbert_doc_words=(100, 290),
    mmbert_docs=300,
    gemm=8192,
    qwen3=QWEN3_FULL,
    qwen3_short_docs=1000,
    qwen3_st_batch=32,
)
SMOKE_PLAN = Plan(
    shape=TINY,
    gte={},
    n_a=12,
    len_a=48,
    n_b=12,
    median_b=24,
    longest_b=160,
    len_c=400,
    n_parity=12,
    longest_parity=120,
    rounds=1,
    st_batch_sizes=(8,),
    colbert_docs=24,
    colbert_doc_words=(5, 40),
    mmbert_docs=12,
    gemm=256,
)
# Shares of the budget: a section starts only while its share is left.
SHARES = {
    "environment": 0.03,
    "parity": 0.15,
    "speed": 0.30,
    "backends": 0.15,
    "colbert": 0.10,
    "mmbert": 0.12,
    "gte": 0.12,
    "qwen3": 0.15,
}


@dataclass
class Context:
    args: argparse.Namespace
    plan: Plan
    device: torch.device
    dtype: torch.dtype
    work: Path
    deadline: float
    peak_flops: float | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- helpers ---------------------------------------------------------------------------


def texts(rng: random.Random, words: Sequence[int]) -> list[str]:
    return [random_text(rng, max(1, n)) for n in words]


def room(total: int) -> int:
    """Document words that make a pair of ``total`` tokens (the word tokenizer: 1 per word)."""
    return total - QUERY_WORDS - SPECIALS


def workload(ctx: Context, name: str) -> tuple[str, list[str]]:
    """The workload's query and documents (cached; each from its own seed)."""
    key = f"workload-{name}"
    if key not in ctx.cache:
        p = ctx.plan
        rng = random.Random({"a": 1, "b": 2, "c": 3, "parity": 4}[name])
        query = random_text(random.Random(0), QUERY_WORDS)
        if name == "a":
            docs = texts(rng, [room(p.len_a)] * p.n_a)
        elif name == "b":
            docs = texts(
                rng, long_tailed_lengths(rng, p.n_b, median=p.median_b, longest=room(p.longest_b))
            )
        elif name == "c":
            docs = texts(rng, [room(p.len_c)])
        else:
            lengths = long_tailed_lengths(
                rng, p.n_parity, median=p.median_b, longest=room(p.longest_parity)
            )
            docs = texts(rng, lengths)
        ctx.cache[key] = (query, docs)
    result: tuple[str, list[str]] = ctx.cache[key]
    return result


def modernbert_dir(ctx: Context) -> Path:
    """ModernBERT seq-cls checkpoint of the plan's shape with 32,768 positions (so that the
    same trunk serves (a), (b) and the mmBERT-shaped (c)), theta 160,000 on every layer."""
    if "modernbert" not in ctx.cache:
        cfg = ctx.plan.shape.config(max(ctx.plan.len_c, 8192))
        cfg.update(global_rope_theta=160000.0, local_rope_theta=160000.0)
        ctx.cache["modernbert"] = make_modernbert_checkpoint(ctx.work / "modernbert", config=cfg)
    path: Path = ctx.cache["modernbert"]
    return path


def scorer(ctx: Context, directory: Path, **options: Any) -> Any:
    from rerank_plugins.local.cross_encoder import CrossEncoderScorer

    options.setdefault("dtype", "bfloat16" if ctx.device.type == "cuda" else "float32")
    options.setdefault("batch_tokens", ctx.args.batch_tokens)
    return CrossEncoderScorer(directory, device=str(ctx.device), output="logit", **options)


def timed(ctx: Context, fn: Callable[[], Any]) -> tuple[float, Any]:
    ctx.sync()
    start = time.perf_counter()
    out = fn()
    ctx.sync()
    return time.perf_counter() - start, out


def peak_memory(ctx: Context, fn: Callable[[], Any]) -> tuple[int, float, Any]:
    """Peak device memory above the starting allocation (CUDA; 0 elsewhere), seconds, result."""
    if ctx.device.type == "cuda":
        ctx.sync()
        torch.cuda.reset_peak_memory_stats(ctx.device)
        base = torch.cuda.memory_allocated(ctx.device)
    seconds, out = timed(ctx, fn)
    peak = torch.cuda.max_memory_allocated(ctx.device) - base if ctx.device.type == "cuda" else 0
    return int(peak), seconds, out


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-a over all pairs (O(n^2); n is a few hundred)."""
    n = len(x)
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(math.copysign(1, x[i] - x[j]) * math.copysign(1, y[i] - y[j]))
    return s / max(1, n * (n - 1) // 2)


def top_agreement(x: Sequence[float], y: Sequence[float], k: int = 10) -> float:
    top = lambda v: set(sorted(range(len(v)), key=lambda i: -v[i])[:k])  # noqa: E731
    return len(top(x) & top(y)) / min(k, len(x))


def sigmoid(v: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * v))


def free(ctx: Context) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


# --- sections --------------------------------------------------------------------------


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


def section_environment(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_line(),
        "command": command_line(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": _version("transformers"),
        "sentence_transformers": _version("sentence-transformers"),
        "tokenizers": _version("tokenizers"),
        "safetensors": _version("safetensors"),
        "device": str(ctx.device),
        "dtype": str(ctx.dtype).removeprefix("torch."),
    }
    features = attn.AttentionFeatures.detect(ctx.device)
    out["features"] = {
        "varlen": features.varlen,
        "varlen_window": features.varlen_window,
        "flex": features.flex,
        "capability": features.capability,
    }
    out["auto_backends"] = str(attn.choose_backends(ctx.device, dtype=ctx.dtype, features=features))
    if ctx.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(ctx.device)
        out["memory_gib"] = round(
            torch.cuda.get_device_properties(ctx.device).total_memory / 2**30, 1
        )
    else:
        out["gpu"] = None
        out["cpu"] = platform.processor() or platform.machine()
    n = ctx.plan.gemm
    a = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    for _ in range(2):
        a @ b  # warm-up (cuBLAS heuristics, clocks)
    reps = 20 if ctx.device.type == "cuda" else 2
    seconds, _ = timed(ctx, lambda: [a @ b for _ in range(reps)])
    ctx.peak_flops = 2 * n**3 * reps / seconds
    out["gemm_peak_tflops"] = float(f"{ctx.peak_flops / 1e12:.4g}")
    out["gemm"] = f"{n}^3 {str(ctx.dtype).removeprefix('torch.')} matmul x {reps}"
    return out


def section_parity(ctx: Context) -> dict[str, Any]:
    d = modernbert_dir(ctx)
    query, docs = workload(ctx, "parity")
    ref = [
        s.value for s in scorer(ctx, d, engine="transformers", dtype="float32").score(query, docs)
    ]
    free(ctx)
    out: dict[str, Any] = {"documents": len(docs), "reference": "transformers fp32 (padded sdpa)"}
    native = [s.value for s in scorer(ctx, d, engine="native").score(query, docs)]
    p_ref, p_nat = [sigmoid(v) for v in ref], [sigmoid(v) for v in native]
    out["native_auto"] = {
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "max_abs_d_probability": max(abs(a - b) for a, b in zip(p_ref, p_nat, strict=True)),
        "max_abs_d_logit": max(abs(a - b) for a, b in zip(ref, native, strict=True)),
        "kendall_tau": kendall_tau(ref, native),
        "top10_agreement": top_agreement(ref, native),
    }
    fp32: dict[str, Any] = {}
    for backend in ("flex", "sdpa"):
        try:
            got = scorer(ctx, d, engine="native", dtype="float32", backend=backend).score(
                query, docs
            )
            fp32[backend] = max(abs(a - s.value) for a, s in zip(ref, got, strict=True))
        except Exception as exc:  # a backend this torch/device lacks is recorded, not fatal
            fp32[backend] = f"{type(exc).__name__}: {exc}"[:200]
        free(ctx)
    out["native_fp32_max_abs_d_logit"] = fp32
    low: dict[str, list[float]] = {}
    for backend in attn.BACKENDS:
        try:
            low[backend] = [s.value for s in scorer(ctx, d, backend=backend).score(query, docs)]
        except Exception as exc:
            out.setdefault("backend_errors", {})[backend] = f"{type(exc).__name__}: {exc}"[:200]
        free(ctx)
    names = sorted(low)
    out["backend_agreement_max_abs_d_logit"] = {
        f"{x} vs {y}": max(abs(a - b) for a, b in zip(low[x], low[y], strict=True))
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    }
    return out


def _engines(ctx: Context, st_batch: int) -> dict[str, Callable[[str, list[str]], list[float]]]:
    from sentence_transformers import CrossEncoder

    d = modernbert_dir(ctx)
    native = scorer(ctx, d, engine="native")
    padded = scorer(ctx, d, engine="transformers")
    st = CrossEncoder(
        str(d),
        device=str(ctx.device),
        max_length=max(ctx.plan.len_c, 8192),
        model_kwargs={"attn_implementation": "sdpa", "dtype": ctx.dtype},
    )
    identity = torch.nn.Identity()

    def run_st(query: str, docs: list[str]) -> list[float]:
        got = st.predict(
            [(query, x) for x in docs],
            batch_size=st_batch,
            activation_fn=identity,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return [float(v) for v in got.float().flatten().cpu()]

    return {
        "native": lambda q, x: [s.value for s in native.score(q, x)],
        f"sentence-transformers (bs {st_batch})": run_st,
        "transformers padded": lambda q, x: [s.value for s in padded.score(q, x)],
    }


def _best_st_batch(ctx: Context) -> int:
    sizes = ctx.plan.st_batch_sizes
    if len(sizes) == 1:
        return sizes[0]
    from sentence_transformers import CrossEncoder

    query, docs = workload(ctx, "a")
    st = CrossEncoder(
        str(modernbert_dir(ctx)),
        device=str(ctx.device),
        model_kwargs={"attn_implementation": "sdpa", "dtype": ctx.dtype},
    )
    pairs = [(query, x) for x in docs[:256]]
    st.predict(pairs[:8], batch_size=8, show_progress_bar=False)
    times = {}
    for size in sizes:
        times[size], _ = timed(
            ctx, lambda s=size: st.predict(pairs, batch_size=s, show_progress_bar=False)
        )
    return min(times, key=lambda s: times[s])


def _measure(
    ctx: Context,
    engines: dict[str, Callable[[str, list[str]], list[float]]],
    name: str,
    shape: Shape | None = None,
) -> dict[str, Any]:
    """First call (cold) and best-of-rounds (warm) per engine, round-robin."""
    query, docs = workload(ctx, name)
    lengths = [len(x.split()) + QUERY_WORDS + SPECIALS for x in docs]
    flops = sum(pair_flops(shape or ctx.plan.shape, n) for n in lengths)
    return _measure_docs(ctx, engines, query, docs, lengths, flops)


def _measure_docs(
    ctx: Context,
    engines: dict[str, Callable[[str, list[str]], list[float]]],
    query: str,
    docs: list[str],
    lengths: list[int],
    flops: float,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {e: {} for e in engines}
    for engine, fn in engines.items():
        try:
            rows[engine]["first_call_s"], _ = timed(ctx, lambda fn=fn: fn(query, docs[:4]))
        except Exception as exc:
            rows[engine]["error"] = f"{type(exc).__name__}: {exc}"[:300]
    for _ in range(ctx.plan.rounds):
        for engine, fn in engines.items():
            row = rows[engine]
            if "error" in row:
                continue
            try:
                peak, seconds, _ = peak_memory(ctx, lambda fn=fn: fn(query, docs))
            except Exception as exc:  # e.g. out of memory on (c): recorded, the rest runs
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                free(ctx)
                continue
            if seconds < row.get("seconds", math.inf):
                row["seconds"] = seconds
            row["peak_mib"] = max(row.get("peak_mib", 0), round(peak / 2**20))
    for row in rows.values():
        if "seconds" in row:
            s = row["seconds"]
            row["docs_per_s"] = len(docs) / s
            row["tokens_per_s"] = sum(lengths) / s
            row["tflops"] = flops / s / 1e12
            if ctx.peak_flops:
                row["fraction_of_gemm_peak"] = flops / s / ctx.peak_flops
    return {
        "documents": len(docs),
        "tokens": sum(lengths),
        "flops": flops,
        "engines": rows,
    }


def section_speed(ctx: Context) -> dict[str, Any]:
    st_batch = _best_st_batch(ctx)
    engines = _engines(ctx, st_batch)
    out: dict[str, Any] = {
        "st_batch_size": st_batch,
        "st_batch_sizes_tried": ctx.plan.st_batch_sizes,
    }
    for name in ("a", "b", "c"):
        if ctx.left() < 10:
            out[name] = {"skipped": "out of time"}
            continue
        out[name] = _measure(ctx, engines, name)
        rows = out[name]["engines"]
        st_rate = rows[f"sentence-transformers (bs {st_batch})"].get("docs_per_s")
        native_rate = rows["native"].get("docs_per_s")
        if st_rate and native_rate:
            out[name]["native_vs_st"] = native_rate / st_rate
    free(ctx)
    return out


def section_backends(ctx: Context) -> dict[str, Any]:
    d = modernbert_dir(ctx)
    engines: dict[str, Callable[[str, list[str]], list[float]]] = {}
    errors: dict[str, str] = {}
    for backend in attn.BACKENDS:
        try:
            s = scorer(ctx, d, engine="native", backend=backend)
            engines[backend] = lambda q, x, s=s: [r.value for r in s.score(q, x)]
        except Exception as exc:
            errors[backend] = f"{type(exc).__name__}: {exc}"[:200]
    out = _measure(ctx, engines, "b") if engines else {}
    out["unavailable"] = errors
    free(ctx)
    return out


def section_colbert(ctx: Context) -> dict[str, Any]:
    from rerank_plugins.local.colbert import ColBERTScorer

    p = ctx.plan
    cfg = {} if p.shape is TINY else p.shape.config(8192)
    cfg.pop("vocab_size", None)  # the word tokenizer's vocabulary (with [Q] and [D])
    cfg.pop("classifier_pooling", None)
    d = make_colbert_checkpoint(ctx.work / "colbert", config=cfg)
    s = ColBERTScorer(d, device=str(ctx.device))
    rng = random.Random(5)
    docs = texts(rng, [rng.randint(*p.colbert_doc_words) for _ in range(p.colbert_docs)])
    query = random_text(rng, QUERY_WORDS)
    s.score(query, docs[:4])  # warm-up
    assert s.vector_cache is not None
    s.vector_cache.clear()
    seconds, vectors = timed(ctx, lambda: s.encode_documents(docs))
    tokens = sum(v.tokens for v in vectors)
    warm = []
    for _ in range(20):
        t, _ = timed(ctx, lambda: s.score(query, docs))
        warm.append(t)
    free(ctx)
    return {
        "candidates": len(docs),
        "cold_encode_s": seconds,
        "cold_tokens_per_s": tokens / seconds,
        "warm_rerank_ms_p50": 1000 * statistics.median(warm),
        "warm_rerank_ms_min": 1000 * min(warm),
        "cache_hits": s.vector_cache.hits,
    }


def section_mmbert(ctx: Context) -> dict[str, Any]:
    from rerank_plugins.local.matryoshka import MatryoshkaScorer

    p = ctx.plan
    cfg = {} if p.shape is TINY else p.shape.config(32768)
    cfg.pop("vocab_size", None)
    cfg.pop("classifier_pooling", None)
    if p.shape is not TINY:
        cfg.pop("local_attention", None)
        cfg.update(global_rope_theta=160000.0, local_rope_theta=160000.0)
    d = make_matryoshka_checkpoint(ctx.work / "mmbert", config=cfg)
    grid = json.loads((d / "matryoshka_config.json").read_text())
    config = json.loads((d / "config.json").read_text())
    shape = Shape(
        layers=int(config["num_hidden_layers"]),
        hidden=int(config["hidden_size"]),
        heads=int(config["num_attention_heads"]),
        intermediate=int(config["intermediate_size"]),
        vocab=int(config["vocab_size"]),
        local_attention=int(config.get("local_attention", 128)),
        global_every=int(config.get("global_attn_every_n_layers", 3)),
    )
    query, docs = workload(ctx, "b")
    docs = docs[: p.mmbert_docs]
    lengths = [len(x.split()) + QUERY_WORDS + SPECIALS for x in docs]
    rows: dict[str, Any] = {}
    for layer in sorted(grid["layer_indices"]):
        s = MatryoshkaScorer(
            d, layer=layer, device=str(ctx.device), batch_tokens=ctx.args.batch_tokens
        )
        s.score(query, docs[:4])
        best = min(timed(ctx, lambda s=s: s.score(query, docs))[0] for _ in range(p.rounds))
        flops = 0.0
        for n in lengths:
            part = Shape(
                layer,
                shape.hidden,
                shape.heads,
                shape.intermediate,
                shape.vocab,
                shape.local_attention,
                shape.global_every,
            )
            flops += pair_flops(part, n)
        rows[str(layer)] = {"seconds": best, "docs_per_s": len(docs) / best, "flops": flops}
        free(ctx)
    full = rows[str(max(grid["layer_indices"]))]
    for row in rows.values():
        row["speedup"] = full["seconds"] / row["seconds"]
        row["predicted_speedup"] = full["flops"] / row["flops"]
        row["speedup_vs_prediction"] = row["speedup"] / row["predicted_speedup"]
    return {"documents": len(docs), "exits": rows}


def section_gte(ctx: Context) -> dict[str, Any]:
    d = make_gte_new_checkpoint(ctx.work / "gte", config=dict(ctx.plan.gte))
    ref_dir = make_gte_reference_checkpoint(d, ctx.work / "gte-reference")
    query, docs = workload(ctx, "b")
    engines: dict[str, Callable[[str, list[str]], list[float]]] = {}
    native = scorer(ctx, d, engine="native")
    padded = scorer(ctx, ref_dir, engine="transformers")
    engines["native"] = lambda q, x: [s.value for s in native.score(q, x)]
    engines["transformers padded"] = lambda q, x: [s.value for s in padded.score(q, x)]
    cfg = json.loads((d / "config.json").read_text())
    # GTE layers are all global with an MLP of H -> 2I -> ... -> H: pair_flops' formula
    # with global_every=1 counts them exactly.
    shape = Shape(
        layers=int(cfg["num_hidden_layers"]),
        hidden=int(cfg["hidden_size"]),
        heads=int(cfg["num_attention_heads"]),
        intermediate=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]),
        global_every=1,
    )
    out = _measure(ctx, engines, "b", shape)
    rows = out["engines"]
    if rows["native"].get("docs_per_s") and rows["transformers padded"].get("docs_per_s"):
        out["native_vs_padded"] = (
            rows["native"]["docs_per_s"] / rows["transformers padded"]["docs_per_s"]
        )
    ref = scorer(ctx, ref_dir, engine="transformers", dtype="float32")
    want = [s.value for s in ref.score(query, docs)]
    got = engines["native"](query, docs)
    out["max_abs_d_logit_vs_fp32"] = max(abs(a - b) for a, b in zip(want, got, strict=True))
    out["kendall_tau_vs_fp32"] = kendall_tau(want, got)
    free(ctx)
    return out


def decoder_pair_flops(cfg: dict[str, Any], length: int) -> float:
    """Useful forward FLOPs of one causal pair of ``length`` tokens on a Qwen3 trunk.

    Per layer: the q, k, v, o projections (GQA: k and v have ``kv_heads`` heads), the
    SwiGLU MLP (gate, up, down), and causal attention ``2 * L * (L + 1) * q_heads * head_dim``
    (scores and weighted sum over the keys at or before each position). The two-row head,
    embeddings, norms and RoPE are left out. A reused prefix is counted in every pair.
    """
    h, i = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
    hd = int(cfg.get("head_dim") or h // int(cfg["num_attention_heads"]))
    q, kv = int(cfg["num_attention_heads"]) * hd, int(cfg["num_key_value_heads"]) * hd
    linear = 2 * length * (h * q + 2 * h * kv + q * h + 3 * h * i)
    attention = 2 * length * (length + 1) * q
    return float(int(cfg["num_hidden_layers"]) * (linear + attention))


def _qwen3_workloads(
    ctx: Context, per_word: float
) -> tuple[tuple[str, list[str]], tuple[str, list[str]]]:
    """Long-tailed documents behind a short query, and short documents behind a long one
    (lengths in the checkpoint's tokens, converted to words with ``per_word``)."""
    p = ctx.plan
    rng = random.Random(8)

    def words(tokens: int) -> int:
        return max(1, round(tokens / per_word))

    query = random_text(rng, words(12))
    longest = p.longest_b - 80  # the template's prefix and suffix
    lengths = long_tailed_lengths(rng, p.n_b, median=p.median_b, longest=longest)
    long_tailed = (query, texts(rng, [words(n) for n in lengths]))
    long_query = random_text(rng, words(130))  # + the default instruction: ~150 tokens
    short = texts(rng, [words(rng.randint(4, 60)) for _ in range(p.qwen3_short_docs)])
    return long_tailed, (long_query, short)


def section_qwen3(ctx: Context) -> dict[str, Any]:
    from sentence_transformers import CrossEncoder

    from rerank_plugins.local.checkpoint import load_tokenizer
    from rerank_plugins.local.decoder import DecoderScorer

    d = make_qwen3_reranker_checkpoint(ctx.work / "qwen3", config=dict(ctx.plan.qwen3))
    cfg = json.loads((d / "config.json").read_text())
    sample = random_text(random.Random(1), 200)
    per_word = len(load_tokenizer(d).encode(sample, add_special_tokens=False)) / 200
    (query, docs), (long_query, short) = _qwen3_workloads(ctx, per_word)
    dtype = "bfloat16" if ctx.device.type == "cuda" else "float32"
    natives = {
        cache: DecoderScorer(
            d,
            device=str(ctx.device),
            dtype=dtype,
            output="logit",
            prefix_cache=cache,
            batch_tokens=ctx.args.batch_tokens,
        )
        for cache in (True, False)
    }
    engines: dict[str, Callable[[str, list[str]], list[float]]] = {
        "native": lambda q, x: [s.value for s in natives[True].score(q, x)],
        "native, prefix_cache=False": lambda q, x: [s.value for s in natives[False].score(q, x)],
    }
    out: dict[str, Any] = {
        "config": {k: cfg[k] for k in QWEN3_FULL if k in cfg},
        "tokens_per_word": per_word,
        "st_batch_size": ctx.plan.qwen3_st_batch,
    }
    st_name = f"sentence-transformers (bs {ctx.plan.qwen3_st_batch})"
    try:
        st = CrossEncoder(
            str(d),
            device=str(ctx.device),
            max_length=ctx.plan.longest_b + 256,
            model_kwargs={"attn_implementation": "sdpa", "dtype": ctx.dtype},
        )
        identity = torch.nn.Identity()

        def run_st(q: str, x: list[str]) -> list[float]:
            got = st.predict(
                [(q, doc) for doc in x],
                batch_size=ctx.plan.qwen3_st_batch,
                activation_fn=identity,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
            return [float(v) for v in got.float().flatten().cpu()]

        engines[st_name] = run_st
    except Exception as exc:  # its causal-LM path may refuse a checkpoint: recorded
        out["st_error"] = f"{type(exc).__name__}: {exc}"[:300]
    for key, (q, x, names) in {
        "long_tailed": (query, docs, list(engines)),
        "short": (long_query, short, ["native", "native, prefix_cache=False"]),
    }.items():
        if ctx.left() < 10:
            out[key] = {"skipped": "out of time"}
            continue
        _, pairs = natives[True].prompt.encode(q, x)
        lengths = [pair.tokens for pair in pairs]
        flops = sum(decoder_pair_flops(cfg, n) for n in lengths)
        out[key] = _measure_docs(ctx, {n: engines[n] for n in names}, q, x, lengths, flops)
        rows = out[key]["engines"]
        on, off = rows["native"].get("seconds"), rows["native, prefix_cache=False"].get("seconds")
        if on and off:
            out[key]["prefix_on_vs_off"] = off / on
        if key == "long_tailed" and rows.get(st_name, {}).get("seconds") and on:
            out[key]["native_vs_st"] = rows[st_name]["seconds"] / on
    # Prefix reuse must not change the scores (bf16 on a GPU: rounding differs a little).
    with_cache = engines["native"](long_query, short)
    without = engines["native, prefix_cache=False"](long_query, short)
    out["prefix_on_vs_off_max_abs_d_logit"] = max(
        abs(a - b) for a, b in zip(with_cache, without, strict=True)
    )
    out["prefix_on_vs_off_kendall_tau"] = kendall_tau(with_cache, without)
    free(ctx)
    return out


SECTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "environment": section_environment,
    "parity": section_parity,
    "speed": section_speed,
    "backends": section_backends,
    "colbert": section_colbert,
    "mmbert": section_mmbert,
    "gte": section_gte,
    "qwen3": section_qwen3,
}


# --- report ----------------------------------------------------------------------------


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.2e}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:,.{max(0, digits - 2)}f}"
    return "-" if v is None else str(v)


SPEED_COLUMNS = [
    Column("engine", "engine", fmt=str, left=True),
    Column("docs_per_s", "docs/s", fmt=",.1f"),
    Column("tokens_per_s", "tokens/s", fmt=",.0f"),
    Column("tflops", "TFLOP/s", fmt=".3g"),
    Column("fraction_of_gemm_peak", "of GEMM peak", fmt=".3f"),
    Column("peak_mib", "peak MiB", fmt=",d"),
    Column("first_call_s", "first call s", fmt=".3g"),
]


def speed_table(title: str, result: dict[str, Any]) -> list[str]:
    rows = [{"engine": name, **row} for name, row in result.get("engines", {}).items()]
    return [
        f"### {title}: {result.get('documents')} docs, {result.get('tokens')} tokens, "
        f"{fmt(result.get('flops', 0) / 1e12)} TFLOP",
        "",
        format_table(rows, SPEED_COLUMNS, markdown=True),
        "",
    ]


def report(results: dict[str, Any]) -> str:
    lines = ["# gpu_check", ""]
    for name, entry in results.items():
        status = entry.get("status")
        lines.append(f"## {name} ({status}, {fmt(entry.get('seconds'))} s)")
        lines.append("")
        if status != "ok":
            lines += ["```", str(entry.get("error", entry.get("reason", ""))), "```", ""]
            continue
        r = entry["result"]
        if name == "speed":
            for w in ("a", "b", "c"):
                if "engines" in r.get(w, {}):
                    lines += speed_table(f"({w})", r[w])
                    if "native_vs_st" in r[w]:
                        lines += [
                            f"native / sentence-transformers: {fmt(r[w]['native_vs_st'])}x",
                            "",
                        ]
        elif name in ("backends", "gte"):
            lines += speed_table(name, r)
            extra = {
                k: v for k, v in r.items() if k not in ("engines", "documents", "tokens", "flops")
            }
            lines += [
                f"- {k}: {fmt(v) if not isinstance(v, dict) else v}" for k, v in extra.items()
            ]
            lines.append("")
        elif name == "qwen3":
            for w in ("long_tailed", "short"):
                if "engines" in r.get(w, {}):
                    lines += speed_table(f"qwen3 {w}", r[w])
                    for k in ("native_vs_st", "prefix_on_vs_off"):
                        if k in r[w]:
                            lines += [f"{k}: {fmt(r[w][k])}x", ""]
            extra = {k: v for k, v in r.items() if k not in ("long_tailed", "short")}
            lines += [
                f"- {k}: {fmt(v) if not isinstance(v, dict) else v}" for k, v in extra.items()
            ]
            lines.append("")
        elif name == "mmbert":
            lines += [
                "| exit | docs/s | speedup | FLOP prediction | measured / predicted |",
                "|---|---|---|---|---|",
            ]
            for layer, row in r["exits"].items():
                lines.append(
                    f"| {layer} | {fmt(row['docs_per_s'])} | {fmt(row['speedup'])} | "
                    f"{fmt(row['predicted_speedup'])} | {fmt(row['speedup_vs_prediction'])} |"
                )
            lines.append("")
        else:
            lines += [f"- {k}: {fmt(v) if not isinstance(v, dict) else v}" for k, v in r.items()]
            lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json/.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, seconds")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds (default 420, so that with overruns the run stays under 8 min)",
    )
    parser.add_argument("--batch-tokens", type=int, default=None, help="native token budget")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --smoke (CPU) or --device cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    if args.batch_tokens is None:
        args.batch_tokens = 32768 if device.type == "cuda" else 4096
    budget = args.budget or (120.0 if args.smoke else 420.0)
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context(
            args=args,
            plan=plan,
            device=device,
            dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            work=Path(work),
            deadline=start + budget,
        )
        wanted = [s for s in args.sections.split(",") if s]
        remaining_share = sum(SHARES[s] for s in wanted)
        for name in wanted:
            left = ctx.left()
            # A section starts only if the time left covers the shares still to come.
            if left < budget * remaining_share * 0.5 and name != "environment":
                results[name] = {
                    "status": "skipped",
                    "reason": f"{left:.0f} s left",
                    "seconds": 0.0,
                }
                remaining_share -= SHARES[name]
                continue
            logger.info("section %s (%.0f s left)", name, left)
            t0 = time.monotonic()
            try:
                results[name] = {"status": "ok", "result": SECTIONS[name](ctx)}
            except Exception as exc:  # recorded; the other sections still run
                results[name] = {
                    "status": "error",
                    "error": f"{type(exc).__name__}: {exc}\n" + traceback.format_exc()[-2000:],
                }
                free(ctx)
            results[name]["seconds"] = time.monotonic() - t0
            remaining_share -= SHARES[name]
            (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    results["total_seconds"] = {"status": "info", "seconds": time.monotonic() - start}
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    text = report({k: v for k, v in results.items() if k != "total_seconds"})
    text += f"\ntotal: {time.monotonic() - start:.0f} s\n"
    (args.out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(v.get("status") in ("ok", "info") for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
