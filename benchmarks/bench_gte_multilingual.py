"""gte-multilingual-reranker-base (GTE "new") throughput: the native engine against transformers.

One process, one random-weight checkpoint in the published gte-multilingual-reranker-base
layout (``model_type: "new"``, ``NewForSequenceClassification``, ``new.`` tensor names,
NTK RoPE, XLM-R tokenizer; written by :func:`rerank_plugins.testing.make_gte_new_checkpoint`),
the same documents for every engine:

- ``native``: ``CrossEncoderScorer`` on that directory (native GTE "new" trunk, packed
  tokens, every layer global attention within each pair), ``--batch-tokens`` per forward;
- ``transformers``: transformers' own ``GteForSequenceClassification`` with sdpa on padded
  batches (``CrossEncoderScorer(engine="transformers")``: length-sorted, batched by a padded
  token budget). transformers rejects the "new" config (NTK ``rope_scaling``), so it loads
  the *same* safetensors from a second directory whose ``config.json`` is the native ``gte``
  one, with the NTK RoPE written as exactly the same frequencies in transformers' "linear"
  RoPE (:func:`rerank_plugins.testing.gte_reference_config`);
- ``sentence-transformers``: ``CrossEncoder`` (sdpa, ``max_length`` = the 8,192 window,
  batches of ``--st-batch-size`` pairs padded to their longest). It cannot load the "new"
  directory without ``trust_remote_code`` (the script tries and prints why), so it runs on
  the transformers reference directory.

Workloads: (a) 1 query x 100 documents of 512 tokens; (b) 1 query x 100 documents with
long-tailed lengths (log-normal, median ~300, the longest at the 8,192 window).

Printed per engine: docs/s and tokens/s (wall clock), docs per process-CPU-second (robust
when other jobs share the machine), our speed ratio to it on both clocks, max |Δ logit|
to the fp32 reference (transformers, padded sdpa, fp32; on CPU that is the timed
transformers run itself) and peak memory (CUDA: peak allocated; CPU: peak RSS growth).
On CUDA also the fraction of the bf16 dense roofline. Engines are timed round-robin,
``--repeats`` rounds, best kept; sentence-transformers, by far the slowest on (b), only in
the first ``--st-repeats`` rounds (table and timing from ``bench_cross_encoder.py`` and
``harness.py``). On a shared
machine, ``--threads 1`` and the CPU-time columns are the steadier figures (two intra-op
threads on two cores that other jobs also use wait on each other).

CPU (scaled-down shape: 6 layers, hidden 384, 6 heads, intermediate 1536, vocab 250,002;
fp32; about 10 minutes on 2 cores, ``--workloads b`` alone about 6)::

    .venv/bin/python benchmarks/bench_gte_multilingual.py --threads 1

GPU (the full shape: 12 layers, hidden 768, 12 heads, intermediate 3072, vocab 250,002;
bf16)::

    python benchmarks/bench_gte_multilingual.py --device cuda --full

``--smoke``: a tiny trunk (the real 250,002 vocabulary) on tiny workloads, one round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch
from bench_cross_encoder import (
    SMOKE_WORKLOADS,
    Engine,
    Shape,
    pair_flops,
    peak_flops,
    print_rows,
    scorer_engine,
    st_engine,
    table_rows,
    time_engines,
)
from harness import Workload

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_gte_new_checkpoint, make_gte_reference_checkpoint

QUERY_WORDS = 9
SPECIALS = 4  # <s> q </s></s> d </s>
WINDOW = 8192

ENGINE_NAMES = {
    "native": "native",
    "st": "sentence-transformers",
    "transformers": "transformers (padded sdpa)",
}


def gte_new_config(
    shape: Shape, *, rope_theta: float, rope_factor: float, init_std: float
) -> dict[str, Any]:
    """Sizes for :func:`make_gte_new_checkpoint` (the rest of the published layout is its)."""
    return {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "max_position_embeddings": WINDOW,
        "type_vocab_size": 1,
        "rope_theta": rope_theta,
        "rope_scaling": {"factor": rope_factor, "type": "ntk"},
        "initializer_range": init_std,
    }


def build_engines(
    directory: Path,
    reference: Path,
    device: torch.device,
    dtype: torch.dtype,
    args: argparse.Namespace,
) -> tuple[dict[str, Engine], str]:
    """The engines to time, and a note on how sentence-transformers was loaded."""
    wanted = args.engines.split(",")
    dtype_name = str(dtype).removeprefix("torch.")
    engines: dict[str, Engine] = {}
    if "native" in wanted:
        native = CrossEncoderScorer(
            directory,
            device=str(device),
            dtype=dtype_name,
            output="logit",
            engine="native",
            batch_tokens=args.batch_tokens,
        )
        engines[ENGINE_NAMES["native"]] = scorer_engine(native)
    note = "not run"
    if "st" in wanted:
        from sentence_transformers import CrossEncoder

        kwargs: dict[str, Any] = {
            "device": str(device),
            "max_length": WINDOW,
            "model_kwargs": {"attn_implementation": "sdpa", "dtype": dtype},
        }
        try:
            st = CrossEncoder(str(directory), **kwargs)
            note = "loaded the GTE 'new' directory itself"
        except Exception as exc:  # the "new" layout needs remote code
            first = str(exc).strip().splitlines()[-1][:160]
            note = (
                f"refused the GTE 'new' directory ({type(exc).__name__}: {first}); "
                "runs on the transformers 'gte' directory"
            )
            st = CrossEncoder(str(reference), **kwargs)
        engines[ENGINE_NAMES["st"]] = st_engine(st, args.st_batch_size)
    if "transformers" in wanted:
        padded = CrossEncoderScorer(
            reference,
            device=str(device),
            dtype=dtype_name,
            output="logit",
            engine="transformers",
            batch_tokens=args.batch_tokens,
        )
        model = padded.classifier.model  # type: ignore[attr-defined]
        assert type(model).__name__ == "GteForSequenceClassification", type(model)
        engines[ENGINE_NAMES["transformers"]] = scorer_engine(padded)
    return engines, note


def reference_logits(reference: Path, workload: Workload, args: argparse.Namespace) -> list[float]:
    """fp32 transformers ``GteForSequenceClassification`` (padded sdpa) on the device."""
    ref = CrossEncoderScorer(
        reference,
        device=args.device,
        dtype="float32",
        output="logit",
        engine="transformers",
        batch_tokens=args.batch_tokens,
    )
    return [s.value for s in ref.score(workload.query, workload.docs)]


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--full", action="store_true", help="the full shape (12 x 768, vocab 250002): for a GPU"
    )
    p.add_argument("--workloads", default="ab", help="any of a, b")
    p.add_argument("--layers", type=int)
    p.add_argument("--hidden", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--rope-theta", type=float, default=160000.0)
    p.add_argument("--rope-factor", type=float, default=8.0)
    p.add_argument(
        "--init-std",
        type=float,
        default=0.05,
        help="weight std; at BERT's 0.02 the random 6x384 trunk scores all documents within "
        "~0.02 logit, at 0.05 they spread over ~1 logit (max |Δ| is read against that)",
    )
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--st-batch-size", type=int, default=8)
    p.add_argument(
        "--st-repeats",
        type=int,
        default=1,
        help="rounds that include sentence-transformers (the slowest engine on (b))",
    )
    p.add_argument("--peak-tflops", type=float, help="bf16 dense peak, for the roofline")
    p.add_argument(
        "--engines", default="native,st,transformers", help="comma-separated subset to time"
    )
    harness.add_common_args(p, repeats=2)
    args = p.parse_args(argv)
    harness.apply_threads(args)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    # Every GTE "new" layer is global: Shape(global_every=1) makes pair_flops count
    # full attention on all of them; its 3*h*I MLP term is the [up|gate] GLU's as well.
    if args.smoke:
        shape = Shape(layers=2, hidden=32, heads=2, intermediate=64, vocab=250002)
        args.repeats = 1
    elif args.full:
        shape = Shape(layers=12, hidden=768, heads=12, intermediate=3072, vocab=250002)
    else:
        shape = Shape(layers=6, hidden=384, heads=6, intermediate=1536, vocab=250002)
    shape.global_every = 1
    shape.layers = args.layers or shape.layers
    shape.hidden = args.hidden or shape.hidden
    shape.heads = args.heads or shape.heads
    shape.intermediate = args.intermediate or shape.intermediate
    dtype = torch.bfloat16 if cuda else torch.float32

    harness.print_header(
        "bench_gte_multilingual",
        device=args.device,
        lines=[
            f"model: GTE 'new' random weights, {shape.layers} layers, hidden {shape.hidden}, "
            f"{shape.heads} heads, intermediate {shape.intermediate} (GLU), vocab {shape.vocab}, "
            f"NTK RoPE theta {args.rope_theta:g} factor {args.rope_factor:g}, init std "
            f"{args.init_std:g}; {dtype}; window {WINDOW}"
        ],
    )
    # The same documents as bench_cross_encoder.py draws for the same seed, one word
    # shorter: the XLM-R pair template has 4 special tokens, ModernBERT's 3.
    sizes: dict[str, int] = {"longest": WINDOW}
    if args.smoke:
        sizes = {k: v for k, v in SMOKE_WORKLOADS.items() if k != "single"}
    names = "".join(c for c in args.workloads if c in "ab")
    peak = peak_flops(device, args.peak_tflops)

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_gte_new_checkpoint(
            Path(tmp) / "gte-new",
            config=gte_new_config(
                shape,
                rope_theta=args.rope_theta,
                rope_factor=args.rope_factor,
                init_std=args.init_std,
            ),
            seed=args.seed,
        )
        reference = make_gte_reference_checkpoint(directory, Path(tmp) / "gte-transformers")
        engines, st_note = build_engines(directory, reference, device, dtype, args)
        print(f"# sentence-transformers: {st_note}")
        warm = harness.pair_workloads(
            "a", args.seed + 100, specials=SPECIALS, query_words=QUERY_WORDS, **sizes
        )[0]
        for fn in engines.values():  # load kernels, allocate pools
            fn(warm.query, warm.docs[:4])
        for workload in harness.pair_workloads(
            names, args.seed, specials=SPECIALS, query_words=QUERY_WORDS, **sizes
        ):
            tokens = sum(workload.pair_lengths)
            print(f"\n## workload {workload.name}: {harness.describe(workload)}")
            # sentence-transformers, by far the slowest on (b), only in the first rounds.
            runs = time_engines(
                engines,
                device,
                workload,
                args.repeats,
                max_rounds={ENGINE_NAMES["st"]: args.st_repeats},
            )
            ref_run = next((r for r in runs if r.engine.startswith("transformers")), None)
            if ref_run is not None and not ref_run.error and not cuda:
                ref = ref_run.value  # already fp32 on CPU
            else:
                ref = reference_logits(reference, workload, args)
            flops = sum(pair_flops(shape, length) for length in workload.pair_lengths)
            rows, ours = table_rows(workload, runs, ref, flops, peak)
            print_rows(rows, peak)
            results += rows
            # max |Δ| means something only next to how far apart the documents score.
            print(
                f"(reference logits: range {max(ref) - min(ref):.3e}, "
                f"stdev {statistics.pstdev(ref):.3e})"
            )
            rate = f"; native {flops / ours.seconds / 1e9:,.1f} GFLOP/s" if ours else ""
            print(
                f"(useful work {flops / 1e9:,.0f} GFLOP = {flops / tokens / 1e9:.3f} "
                f"GFLOP/token{rate})"
            )
    harness.write_json(args.json, "bench_gte_multilingual", results, args=args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
