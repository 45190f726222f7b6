"""Decoder reranker throughput: the native Qwen3 engine against the model card's code.

One process, one random-weight ``Qwen3ForCausalLM`` checkpoint in Qwen3-Reranker's layout
(scaled: 4 layers, hidden 512, 8/4 heads, head_dim 64, the real vocabulary size 151,669),
the Qwen3-Reranker template on every engine, fp32:

- ``native``: ``DecoderScorer`` (packed causal batches, the two answer rows of the head at
  the last positions, each query's prefix run once);
- ``card``: the model card's transformers code (prefix/content/suffix tokenised apart,
  left-padded batches of ``--card-batch-size`` pairs in input order,
  ``AutoModelForCausalLM`` with sdpa attention, ``logits[:, -1, :]``: it computes the
  logits of every position over the whole vocabulary);
- ``sentence-transformers``: ``CrossEncoder`` on the same checkpoint (its causal-LM path:
  the pair as ``query``/``document`` messages rendered by the checkpoint's chat template,
  tokenised at once, left-padded batches of ``--st-batch-size``, ``LogitScore`` = logit("yes")
  - logit("no") with ``logits_to_keep=1``, no activation). The checkpoint's
  ``chat_template.jinja`` renders the card's prompt with the default instruction
  (``rerank_plugins.testing.QWEN3_RERANKER_CHAT_TEMPLATE``), so it scores the same prompts
  (the same token ids, ``tests/local/test_decoder_sentence_transformers.py``): its speed and
  its scores are comparable.

Workloads: (a) 100 documents of long-tailed lengths (median ~300 tokens, the longest
4,096), all engines; (b) 200 short documents (<= 64 tokens) behind a ~150-token
instruction + query: ``native`` with the prefix cache on and off; (c) peak RSS growth while
scoring one 1,024-token document against the vocabulary size (32K, 151,669, 300K): native
and card.

Printed per row: docs/s (wall), docs per process-CPU-second, our speed ratio on both
clocks, max |Δ logit| to the reference's scores (the card's in (a), sentence-transformers'
row included; the prefix cache off in (b)), peak RSS growth. Engines are timed
round-robin, ``--repeats`` rounds, best kept (``harness.py``).

    python benchmarks/bench_decoder.py --threads 1

``--smoke``: a tiny model (vocabulary 4,096) and a few documents, one round.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness
import torch
import transformers
from harness import Column, Workload

from rerank_plugins.local.checkpoint import load_tokenizer
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.local.decoder_prompt import QWEN3_INSTRUCTION, QWEN3_PREFIX, QWEN3_SUFFIX
from rerank_plugins.testing import make_qwen3_reranker_checkpoint, random_text

Engine = Callable[[str, list[str]], list[float]]

SHAPE = {
    "num_hidden_layers": 4,
    "hidden_size": 512,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 151669,
    "initializer_range": 0.05,
}
SMOKE_SHAPE = {
    **SHAPE,
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 96,
    "vocab_size": 4096,
}


def card_engine(directory: Path, batch_size: int, max_length: int = 8192) -> Engine:
    """The Qwen3-Reranker model card's code, as written there (batched, left padding)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    prefix = tok.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)

    def run(query: str, docs: list[str]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(docs), batch_size):
            pairs = [
                f"<Instruct>: {QWEN3_INSTRUCTION}\n<Query>: {query}\n<Document>: {d}"
                for d in docs[start : start + batch_size]
            ]
            inputs = tok(
                pairs,
                padding=False,
                truncation="longest_first",
                return_attention_mask=False,
                max_length=max_length - len(prefix) - len(suffix),
            )
            inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
            batch = tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
            with torch.no_grad():
                last = model(**batch).logits[:, -1, :]
            out += (last[:, yes] - last[:, no]).tolist()
        return out

    return run


def st_engine(directory: Path, batch_size: int) -> Engine:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(directory), device="cpu", max_length=8192)
    identity = torch.nn.Identity()

    def run(query: str, docs: list[str]) -> list[float]:
        out = model.predict(
            [(query, d) for d in docs],
            batch_size=batch_size,
            activation_fn=identity,
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        return [float(x) for x in out.float().flatten().cpu()]

    return run


def native_engine(directory: Path, *, prefix_cache: bool, batch_tokens: int) -> Engine:
    scorer = DecoderScorer(
        directory,
        device="cpu",
        dtype="float32",
        output="logit",
        prefix_cache=prefix_cache,
        batch_tokens=batch_tokens,
    )
    return lambda q, d: [s.value for s in scorer.score(q, d)]


def text_of_tokens(rng: random.Random, tokens: int, per_word: float) -> str:
    return random_text(rng, max(1, round(tokens / per_word)))


def workloads(seed: int, per_word: float, *, smoke: bool) -> dict[str, Workload]:
    rng = random.Random(seed)
    n_a, n_b = (6, 8) if smoke else (100, 200)
    median, longest = (32, 256) if smoke else (300, 4096)
    query = text_of_tokens(rng, 12, per_word)
    lengths = harness.long_tailed_lengths(rng, n_a, median=median, longest=longest - 80)
    a = Workload(
        f"a: {n_a} x long-tail", query, [text_of_tokens(rng, n, per_word) for n in lengths]
    )
    long_query = text_of_tokens(rng, 130, per_word)  # + the instruction: ~150 tokens
    short = [text_of_tokens(rng, rng.randint(4, 60), per_word) for _ in range(n_b)]
    b = Workload(f"b: {n_b} x short, long query", long_query, short)
    return {"a": a, "b": b}


def pair_lengths(directory: Path, workload: Workload) -> list[int]:
    scorer = DecoderScorer(directory, device="cpu")
    _, pairs = scorer.prompt.encode(workload.query, workload.docs)
    return [p.tokens for p in pairs]


def rows_for(
    workload: Workload, engines: dict[str, Engine], args: argparse.Namespace, reference: str
) -> list[dict[str, Any]]:
    runs = harness.round_robin(
        {name: (lambda fn=fn: fn(workload.query, workload.docs)) for name, fn in engines.items()},
        args.repeats,
        memory="cpu",
    )
    ours = runs["native"] if "native" in runs else next(iter(runs.values()))
    ref = runs.get(reference)
    rows = []
    for name, run in runs.items():
        row: dict[str, Any] = {"workload": workload.name, "engine": name, "error": run.error}
        if not run.error:
            n = len(workload.docs)
            delta = None
            if ref is not None and not ref.error:
                delta = max(abs(a - b) for a, b in zip(run.value, ref.value, strict=True))
            row.update(
                seconds=run.seconds,
                cpu_seconds=run.cpu_seconds,
                docs_per_s=n / run.seconds,
                docs_per_cpu_s=n / run.cpu_seconds,
                ours_over_this=harness.ratio(run.seconds, ours.seconds),
                ours_over_this_cpu=harness.ratio(run.cpu_seconds, ours.cpu_seconds),
                max_abs_delta=delta,
                peak_bytes=run.peak_bytes,
            )
        rows.append(row)
    return rows


def vocabulary_rows(
    tmp: Path, shape: dict[str, Any], sizes: Sequence[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """(c): peak RSS growth while scoring one long document, against the vocabulary size."""
    rows = []
    rng = random.Random(args.seed + 7)
    doc = random_text(rng, 64 if args.smoke else 700)
    query = random_text(rng, 8)
    for vocab in sizes:
        directory = make_qwen3_reranker_checkpoint(
            tmp / f"vocab{vocab}", config={**shape, "vocab_size": vocab}, seed=args.seed
        )
        engines = {
            "native": native_engine(directory, prefix_cache=True, batch_tokens=args.batch_tokens),
            "card": card_engine(directory, 1),
        }
        for name, fn in engines.items():
            fn(query, [doc])  # warm-up: first-call allocations are not the steady state
            run = harness.time_call(name, lambda fn=fn: fn(query, [doc]), memory="cpu")
            rows.append(
                {
                    "workload": f"c: vocab {vocab:,}",
                    "engine": name,
                    "vocab": vocab,
                    "seconds": run.seconds,
                    "cpu_seconds": run.cpu_seconds,
                    "peak_bytes": run.peak_bytes,
                }
            )
        del engines
    return rows


COLUMNS = [
    Column("workload", "workload", 30, "", left=True),
    Column("engine", "engine", 22, "", left=True),
    Column("docs_per_s", "docs/s", 9, ".1f"),
    Column("docs_per_cpu_s", "docs/cpu-s", 10, ".1f"),
    Column("ours_over_this", "ours x", 7, ".2f"),
    Column("ours_over_this_cpu", "ours x cpu", 10, ".2f"),
    Column("max_abs_delta", "max|Δ|", 9, ".1e"),
    Column("peak_bytes", "peak RSS", 10, harness.fmt_bytes),
]
VOCAB_COLUMNS = [
    Column("workload", "workload", 30, "", left=True),
    Column("engine", "engine", 22, "", left=True),
    Column("seconds", "seconds", 9, ".2f"),
    Column("cpu_seconds", "cpu-s", 9, ".2f"),
    Column("peak_bytes", "peak RSS", 10, harness.fmt_bytes),
]


def main(argv: Sequence[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workloads", default="abc", help="any of a, b, c")
    p.add_argument("--card-batch-size", type=int, default=1)
    p.add_argument("--st-batch-size", type=int, default=8)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    harness.add_common_args(p, repeats=1)
    args = p.parse_args(argv)
    harness.apply_threads(args)
    shape = SMOKE_SHAPE if args.smoke else SHAPE
    vocab_sizes = (1024, 4096) if args.smoke else (32_000, 151_669, 300_000)
    harness.print_header(
        "bench_decoder",
        lines=[
            f"model: Qwen3ForCausalLM random weights, {shape['num_hidden_layers']} layers, "
            f"hidden {shape['hidden_size']}, {shape['num_attention_heads']}/"
            f"{shape['num_key_value_heads']} heads, vocab {shape['vocab_size']:,}; float32",
        ],
    )
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        directory = make_qwen3_reranker_checkpoint(tmp / "ckpt", config=shape, seed=args.seed)
        tokenizer = load_tokenizer(directory)
        sample = random_text(random.Random(1), 200)
        per_word = len(tokenizer.encode(sample, add_special_tokens=False)) / 200
        loads = workloads(args.seed, per_word, smoke=args.smoke)
        if "a" in args.workloads:
            w = loads["a"]
            w.pair_lengths = pair_lengths(directory, w)
            print(f"# {w.name}: {harness.describe(w)}")
            engines: dict[str, Engine] = {
                "native": native_engine(
                    directory, prefix_cache=True, batch_tokens=args.batch_tokens
                ),
                "card": card_engine(directory, args.card_batch_size),
            }
            try:
                engines["sentence-transformers"] = st_engine(directory, args.st_batch_size)
            except Exception as exc:  # its causal-LM path may refuse the tiny checkpoint
                results.append(
                    {
                        "workload": w.name,
                        "engine": "sentence-transformers",
                        "error": repr(exc)[:200],
                    }
                )
            results += rows_for(w, engines, args, reference="card")
        if "b" in args.workloads:
            w = loads["b"]
            w.pair_lengths = pair_lengths(directory, w)
            print(f"# {w.name}: {harness.describe(w)}")
            engines = {
                "native": native_engine(
                    directory, prefix_cache=True, batch_tokens=args.batch_tokens
                ),
                "native, prefix_cache=False": native_engine(
                    directory, prefix_cache=False, batch_tokens=args.batch_tokens
                ),
            }
            results += rows_for(w, engines, args, reference="native, prefix_cache=False")
        print(harness.format_table(results, COLUMNS, markdown=args.markdown))
        print(
            "max|Δ|: max |Δ logit| against (a) the card's scores (sentence-transformers "
            "scores the card's prompt, rendered by the checkpoint's chat template), "
            "(b) the prefix cache off"
        )
        if "c" in args.workloads:
            vocab_rows = vocabulary_rows(tmp, shape, vocab_sizes, args)
            print(harness.format_table(vocab_rows, VOCAB_COLUMNS, markdown=args.markdown))
            results += vocab_rows
    harness.write_json(args.json, "bench_decoder", results, args=args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
