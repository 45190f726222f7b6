"""2D-Matryoshka early exit: docs/s at every (layer, dim) of an mmBERT-shaped reranker.

One process, one random-weight checkpoint in the published
mmbert-rerank-32k-2d-matryoshka layout (bare ModernBERT encoder, ``matryoshka_config.json``,
``classification_heads.pt``), one long-tailed workload (1 query x N documents, log-normal
lengths, the longest at ``--longest`` tokens). For each exit ``(layer, dim)`` the native
``MatryoshkaScorer`` runs only the first ``layer`` encoder layers; the table gives docs/s,
tokens/s, the speed relative to the full model (last layer, full width) and the speed the
FLOP count predicts for running only that many layers (:func:`bench_cross_encoder.pair_flops`).
Exits are timed round-robin (every round times every exit once; best of the rounds), so
background load on a shared machine spreads over all of them.

Baseline (``--reference``, on by default): the published implementation's way, i.e.
transformers' ``ModernBertModel`` with ``output_hidden_states=True`` on padded batches (fp32,
sdpa), which runs every layer whatever exit is asked for, then the same heads. Its logits
give max |Δ| per exit.

CPU (22 layers as mmBERT, hidden 64; a few minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_matryoshka.py

GPU (the full mmBERT shape, bf16; untested here)::

    python benchmarks/bench_matryoshka.py --device cuda

``--smoke``: 4 layers, hidden 32, 2 x 2 exits, 6 short documents, one round (seconds;
checks the script runs).

Cascade (``--cascade E:K``): instead of the exit grid, the full model against
``MatryoshkaScorer(exit_layer=E, keep=K)`` on the same documents (wall and CPU seconds,
round-robin). Every document runs ``E`` layers and the ``K`` kept continue from their
layer-``E`` states to the last layer, so the FLOP prediction of the speed-up is::

    sum_d F_L(d) / (sum_d F_E(d) + sum_{d kept} (F_L(d) - F_E(d)))

with ``F_n(d)`` the FLOPs of the first ``n`` layers on document ``d``
(:func:`bench_cross_encoder.pair_flops`); about ``L / (E + K/N (L - E))`` for even lengths
(22 layers, exit 6, keep 20 of 200: 2.9x). ``--tiny``: the 8-layer test checkpoint
(``make_matryoshka_checkpoint``'s defaults: hidden 64, exits 1, 2, 4, 8)::

    python benchmarks/bench_matryoshka.py --threads 1 --cascade 6:20 --docs 200 \
        --hidden 256 --median 192 --longest 1024
    python benchmarks/bench_matryoshka.py --threads 1 --tiny --cascade 2:20 --docs 200
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness
import torch
import torch.nn.functional as F
from bench_cross_encoder import Shape, pair_flops
from harness import CLOCKS, Column, long_tailed_lengths

from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.matryoshka import MatryoshkaScorer
from rerank_plugins.testing import make_matryoshka_checkpoint, random_text

QUERY_WORDS = 9
SPECIALS = 3  # <bos> q <eos> d <eos>


def make_docs(rng: random.Random, n: int, median: int, longest: int) -> tuple[str, list[str]]:
    query = random_text(rng, QUERY_WORDS)
    lengths = long_tailed_lengths(rng, n, median=median, longest=longest - QUERY_WORDS - SPECIALS)
    return query, [random_text(rng, k) for k in lengths]


def time_exits(
    scorers: dict[tuple[int, int], MatryoshkaScorer],
    query: str,
    docs: list[str],
    rounds: int,
    clock: harness.Clock,
) -> dict[tuple[int, int], float]:
    """Best seconds (on ``clock``) of one ``score`` call per exit over ``rounds`` rounds of
    :func:`harness.round_robin` (every round times every exit once)."""
    calls = {
        f"{layer}.{dim}": (lambda s=scorer: s.score(query, docs))
        for (layer, dim), scorer in scorers.items()
    }
    device = next(iter(scorers.values())).device
    runs = harness.round_robin(calls, rounds, clock=clock, sync=harness.cuda_sync(device), catch=())
    return {key: runs[f"{key[0]}.{key[1]}"].on(clock) for key in scorers}


def reference_logits(
    directory: Path,
    pairs: list[list[int]],
    exits: list[tuple[int, int]],
    device: torch.device,
    batch_tokens: int,
    clock: Callable[[], float],
) -> tuple[dict[tuple[int, int], list[float]], float]:
    """The published implementation's rule on transformers' padded forward (fp32, sdpa):
    every layer runs, ``hidden_states[L]`` is read (raw at the last layer, as transformers
    4.x returned it), ``final_norm`` applied below the last layer, CLS, the head.
    Returns the logits per exit and the seconds of the forward passes."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    model = transformers.ModernBertModel.from_pretrained(
        str(directory), attn_implementation="sdpa", dtype=torch.float32
    )
    model = model.to(device)  # type: ignore[arg-type]  # transformers' stub of .to wants a model
    model.eval()
    heads = torch.load(str(directory / "classification_heads.pt"), weights_only=True)
    heads = {k: v.to(device) for k, v in heads.items()}
    n_layers = model.config.num_hidden_layers
    out: dict[tuple[int, int], list[float]] = {e: [math.nan] * len(pairs) for e in exits}
    seconds = 0.0
    raw: list[torch.Tensor] = []  # final_norm's input: the raw last-layer state
    model.final_norm.register_forward_pre_hook(lambda m, a: raw.append(a[0]))
    for batch in token_budget_batches(
        [len(p) for p in pairs], max_tokens=batch_tokens, padded=True
    ):
        longest = max(len(pairs[i]) for i in batch)
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : len(pairs[i])] = torch.tensor(pairs[i])
            mask[row, : len(pairs[i])] = 1
        raw.clear()
        start = clock()
        with torch.inference_mode():
            hs = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            ).hidden_states
            if device.type == "cuda":
                torch.cuda.synchronize()
        seconds += clock() - start
        with torch.inference_mode():
            for layer, dim in exits:
                h = raw[0] if layer == n_layers else model.final_norm(hs[layer])
                cls = h[:, 0, :dim]
                p = f"{layer}.{dim}."
                x = F.gelu(F.linear(cls, heads[p + "0.weight"], heads[p + "0.bias"]))
                logits = F.linear(x, heads[p + "3.weight"], heads[p + "3.bias"])[:, 0]
                for i, value in zip(batch, logits.tolist(), strict=True):
                    out[layer, dim][i] = value
    return out, seconds


TABLE = [
    Column("layer", "layer", 5, "d"),
    Column("dim", "dim", 5, "d"),
    Column("docs_per_s", "docs/s", 9, ".2f"),
    Column("tokens_per_s", "tokens/s", 10, ",.0f"),
    Column("speed_vs_full", "speed", 7, lambda x: f"{x:.2f}x"),
    Column("flop_predicted_speed", "FLOP-pred", 9, lambda x: f"{x:.2f}x"),
    Column("max_abs_delta", "max|Δ|", 9, ".2e"),
]


CASCADE_TABLE = [
    Column("scorer", "scorer", 22, "", left=True),
    Column("docs_per_s", "docs/s", 9, ".2f"),
    Column("wall_s", "wall s", 8, ".3f"),
    Column("cpu_s", "CPU s", 8, ".3f"),
    Column("speed_vs_full", "speed", 7, lambda x: f"{x:.2f}x"),
    Column("flop_predicted_speed", "FLOP-pred", 9, lambda x: f"{x:.2f}x"),
    Column("of_prediction", "of pred", 7, lambda x: f"{x:.0%}"),
    Column("max_abs_delta", "max|Δ| kept", 11, ".2e"),
]


def cascade_rows(
    directory: Path,
    shape: Shape,
    query: str,
    docs: list[str],
    *,
    exit_layer: int,
    keep: int,
    device: torch.device,
    dtype: str,
    batch_tokens: int,
    rounds: int,
    clock: harness.Clock,
) -> list[dict[str, Any]]:
    """The full model and the cascade, timed round-robin; speed on ``clock``, the FLOP
    prediction (module docstring) and max |Δ| of the kept documents against the full
    model (they must agree)."""

    def scorer(**cascade: int) -> MatryoshkaScorer:
        return MatryoshkaScorer(
            directory,
            device=str(device),
            dtype=dtype,
            output="logit",
            batch_tokens=batch_tokens,
            **cascade,
        )

    full, cascade = scorer(), scorer(exit_layer=exit_layer, keep=keep)
    for each in (full, cascade):  # load kernels, allocate pools
        each.score(query, docs[:4])
    runs = harness.round_robin(
        {"full": lambda: full.score(query, docs), "cascade": lambda: cascade.score(query, docs)},
        rounds,
        clock=clock,
        sync=harness.cuda_sync(device),
        catch=(),
    )
    full_scores, cascade_scores = full.score(query, docs), cascade.score(query, docs)
    kept = [i for i, s in enumerate(cascade_scores) if s.stage == 1]
    delta = max(abs(cascade_scores[i].value - full_scores[i].value) for i in kept)
    lengths = [pair.tokens for pair in full.encode_pairs(query, docs)]
    layers = full.layer

    def flops(n_layers: int, length: int) -> float:
        return pair_flops(Shape(**{**shape.__dict__, "layers": n_layers}), length)

    total = sum(flops(layers, k) for k in lengths)
    spent = sum(flops(exit_layer, k) for k in lengths) + sum(
        flops(layers, lengths[i]) - flops(exit_layer, lengths[i]) for i in kept
    )
    predicted = total / spent
    print(
        f"# cascade: exit {exit_layer} of {layers} layers, keep {keep} of {len(docs)} "
        f"({sum(lengths):,} pair tokens); FLOP prediction {predicted:.2f}x"
    )
    base = runs["full"].on(clock)
    rows = []
    for name, run, pred in (
        ("full", runs["full"], 1.0),
        (f"cascade {exit_layer}:{keep}", runs["cascade"], predicted),
    ):
        speed = base / run.on(clock)
        rows.append(
            {
                "scorer": name,
                "docs_per_s": len(docs) / run.on(clock),
                "wall_s": run.seconds,
                "cpu_s": run.cpu_seconds,
                "speed_vs_full": speed,
                "flop_predicted_speed": pred,
                "of_prediction": speed / pred,
                "max_abs_delta": delta if name != "full" else None,
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--docs", type=int, default=64, help="documents in the workload")
    p.add_argument("--median", type=int, default=256, help="median document length (tokens)")
    p.add_argument("--longest", type=int, default=4096, help="longest pair (tokens)")
    p.add_argument("--hidden", type=int, help="hidden size (CPU default 64, CUDA 768)")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--cascade", help="E:K: time a cascade (exit E, keep K) against the full model")
    p.add_argument("--tiny", action="store_true", help="the 8-layer test checkpoint's shape")
    harness.add_common_args(p, repeats=3, clock=True)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    harness.apply_threads(args)
    if args.smoke:
        args.docs, args.median, args.longest, args.repeats = 6, 32, 256, 1
    clock_name: harness.Clock = "wall" if cuda else args.clock
    clock = CLOCKS[clock_name]
    hidden = args.hidden or (32 if args.smoke else 768 if cuda else 64)
    # mmBERT-base: 22 layers, global every 3rd, local window 128, intermediate 1.5 x hidden.
    heads = hidden // 64 if hidden >= 256 else 4  # head_dim 64 as mmBERT, 16 when small
    shape = Shape(
        layers=4 if args.smoke else 22,
        hidden=hidden,
        heads=heads,
        intermediate=hidden * 3 // 2,
        vocab=305,
    )
    if args.tiny:  # make_matryoshka_checkpoint's defaults (the tests' checkpoint)
        shape = Shape(layers=8, hidden=64, heads=4, intermediate=96, vocab=305, local_attention=8)
    dtype = "bfloat16" if cuda else "float32"
    window = 32768

    harness.print_header(
        "bench_matryoshka",
        device=args.device,
        lines=[
            f"model: mmBERT-shaped 2D-Matryoshka reranker, random weights, {shape.layers} "
            f"layers, hidden {shape.hidden}, {shape.heads} heads, intermediate "
            f"{shape.intermediate}, local window {shape.local_attention}, global every "
            f"{shape.global_every}, RoPE theta 160000; {dtype}; window {window}"
        ],
    )
    rng = random.Random(args.seed)
    query, docs = make_docs(rng, args.docs, args.median, args.longest)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = {**shape.config(window), "initializer_range": 0.2}
        if args.tiny:
            config = {"max_position_embeddings": window}
        # --smoke: 4 exits of a 4-layer trunk instead of mmBERT's 4 x 5 grid over 22 layers.
        smoke_exits = {"layer_indices": [2, 4], "dim_indices": [32, 16]} if args.smoke else None
        directory = make_matryoshka_checkpoint(
            Path(tmp) / "ckpt", config=config, matryoshka=smoke_exits, seed=args.seed
        )
        grid = json.loads((directory / "matryoshka_config.json").read_text())
        layers, dims = grid["layer_indices"], grid["dim_indices"]
        if args.cascade:
            exit_layer, keep = (int(x) for x in args.cascade.split(":"))
            results = cascade_rows(
                directory,
                shape,
                query,
                docs,
                exit_layer=exit_layer,
                keep=keep,
                device=device,
                dtype=dtype,
                batch_tokens=args.batch_tokens,
                rounds=args.repeats,
                clock=clock_name,
            )
            print()
            print(harness.format_table(results, CASCADE_TABLE))
            harness.write_json(args.json, "bench_matryoshka_cascade", results, args=args)
            return 0
        print(f"# exits: layers {layers} x dims {dims}")

        def scorer(layer: int, dim: int) -> MatryoshkaScorer:
            return MatryoshkaScorer(
                directory,
                layer=layer,
                dim=dim,
                device=str(device),
                dtype=dtype,
                output="logit",
                batch_tokens=args.batch_tokens,
            )

        scorers = {(layer, dim): scorer(layer, dim) for layer in layers for dim in dims}
        full = scorers[layers[-1], dims[0]]
        pairs = [pair.ids for pair in full.encoder.encode(query, docs)]
        lengths = sorted(len(x) for x in pairs)
        tokens = sum(lengths)
        n = len(docs)
        print(
            f"# workload: 1 query x {n} docs, {tokens:,} pair tokens "
            f"(median {lengths[n // 2]}, max {lengths[-1]}), batch_tokens {args.batch_tokens}, "
            f"best of {args.repeats} rounds on the {clock_name} clock"
        )

        reference: dict[tuple[int, int], list[float]] = {}
        if args.reference:
            exits = [(layer, dim) for layer in layers for dim in dims]
            reference, ref_seconds = reference_logits(
                directory, pairs, exits, device, args.batch_tokens, clock
            )
            print(
                f"# reference (transformers padded sdpa fp32, all {shape.layers} layers for "
                f"every exit): {n / ref_seconds:.2f} docs/s at any exit"
            )

        for each in scorers.values():  # load kernels, allocate pools
            each.score(query, docs[:4])
        seconds = time_exits(scorers, query, docs, args.repeats, clock_name)
        if clock is not CLOCKS["wall"]:
            print("# docs/s and tokens/s below are per CPU-second of this process")
        full_flops = sum(pair_flops(shape, k) for k in lengths)
        base = seconds[layers[-1], dims[0]]
        for layer in reversed(layers):
            part = Shape(**{**shape.__dict__, "layers": layer})
            predicted = full_flops / sum(pair_flops(part, k) for k in lengths)
            for dim in dims:
                t = seconds[layer, dim]
                delta = math.nan
                if reference:
                    ours = [x.value for x in scorers[layer, dim].score(query, docs)]
                    ref = reference[layer, dim]
                    delta = max(abs(a - b) for a, b in zip(ours, ref, strict=True))
                results.append(
                    {
                        "layer": layer,
                        "dim": dim,
                        "seconds": t,
                        "docs_per_s": n / t,
                        "tokens_per_s": tokens / t,
                        "speed_vs_full": base / t,
                        "flop_predicted_speed": predicted,
                        "max_abs_delta": delta if reference else None,
                    }
                )
        print()
        print(harness.format_table(results, TABLE))
    harness.write_json(args.json, "bench_matryoshka", results, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
