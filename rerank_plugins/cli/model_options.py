"""The model options of every subcommand that loads a model (``rerank``, ``serve``, ``score``).

One definition, so that ``rerank-plugins rerank`` and ``rerank-plugins serve`` take the
same ``--model``, ``--device``, ``--dtype``, ``--max-length``, ``--batch-tokens``,
``--layer``/``--dim``, the past-the-window options (``--chunk-tokens``,
``--chunk-overlap``, ``--aggregate``, ``--max-tokens-per-doc``), the cascades
(``--exit-layer``/``--keep``, ``--cascade``/``--keep``: see
:func:`~rerank_plugins.loading.load_model`), ``--instruction``, ``--dialect`` and
``--calibration``, with the same defaults and checks.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import DEFAULT_MODEL, is_remote

__all__ = ["MODEL_ENV", "add_model_options", "model_options"]

MODEL_ENV = "RERANK_MODEL"

# Options that only one kind of model takes: given for the other kind they are an error
# naming the flag (rather than an UnknownOptionError naming a keyword argument).
_LOCAL_ONLY = {
    "device": "--device",
    "dtype": "--dtype",
    "batch_tokens": "--batch-tokens",
    "max_length": "--max-length",
    "layer": "--layer",
    "dim": "--dim",
    "chunk_tokens": "--chunk-tokens",
    "chunk_overlap": "--chunk-overlap",
    "aggregate": "--aggregate",
    "max_tokens_per_doc": "--max-tokens-per-doc",
    "exit_layer": "--exit-layer",
    "threads": "--threads",
}
# Passed on to a local scorer as they are (when given).
_LOCAL_PASSED = (
    "layer",
    "dim",
    "chunk_tokens",
    "chunk_overlap",
    "aggregate",
    "max_tokens_per_doc",
    "exit_layer",
    "instruction",
)
_REMOTE_ONLY = {"dialect": "--dialect"}


def add_model_options(parser: argparse._ActionsContainer, *, defaults: bool) -> None:
    """Add the model options. ``defaults=False`` gives them ``SUPPRESS`` defaults, for a
    subcommand's copy of options also accepted before the subcommand (a value given there
    is then not reset by the subcommand's parser)."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    model = os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    add = parser.add_argument
    add(
        "-m",
        "--model",
        default=default(model),
        help="hub id, local checkpoint directory or http(s) endpoint "
        f"(default: ${MODEL_ENV}, else {DEFAULT_MODEL})",
    )
    add("--device", default=default(None), help="auto (default), cpu, cuda, cuda:1, ...")
    add(
        "--dtype",
        default=default(None),
        help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16",
    )
    add(
        "--max-length",
        type=int,
        default=default(None),
        help="token window (default: the model's own)",
    )
    add(
        "--batch-tokens",
        type=int,
        default=default(None),
        help="token budget per forward pass (local models; default: the model's own, "
        "sized for its device: 2048 on CPU, 16384 on GPU)",
    )
    add(
        "--layer",
        type=int,
        default=default(None),
        help="matryoshka models: exit layer (default: the deepest exit)",
    )
    add(
        "--dim",
        type=int,
        default=default(None),
        help="matryoshka models: head width (default: the model's first listed width)",
    )
    add(
        "--chunk-tokens",
        type=int,
        default=default(None),
        help="with --overflow chunk: document tokens per window (default: all the room "
        "the window leaves beside the query)",
    )
    add(
        "--chunk-overlap",
        type=int,
        default=default(None),
        help="with --overflow chunk: tokens shared by consecutive windows (default 0)",
    )
    add(
        "--aggregate",
        choices=["max", "mean", "top2", "top3"],
        default=default(None),
        help="with --overflow chunk: a document's score from its windows' (default max)",
    )
    add(
        "--max-tokens-per-doc",
        type=int,
        default=default(None),
        help="cut every document to its first N tokens (flagged truncated; default: no cap)",
    )
    add(
        "--exit-layer",
        type=int,
        default=default(None),
        help="matryoshka cascade: score every document at this exit, continue the --keep "
        "best to --layer (default: no cascade)",
    )
    add(
        "--cascade",
        default=default(None),
        metavar="MODEL",
        help="a second model that re-scores the --keep best of --model's scores (default: none)",
    )
    add(
        "--keep",
        type=int,
        default=default(None),
        help="documents a cascade (--exit-layer or --cascade) continues (no default: a "
        "cascade needs it)",
    )
    add(
        "--threads",
        default=default(None),
        help="intra-op CPU threads: a count or auto (default: $RERANK_THREADS, else the "
        "CPUs this process may use, by affinity and cgroup quota, minus those busy)",
    )
    add(
        "--instruction",
        default=default(None),
        help="decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2): the task instruction "
        "(default: the model card's); with an http(s) endpoint it is sent in the "
        "dialect's field (cohere, tei: instruction; sglang: instruct; refused by the others)",
    )
    add(
        "--dialect",
        default=default(None),
        help="remote endpoint API dialect (cohere, tei, voyage, mixedbread, nim, vllm-score, "
        "sglang; default: cohere)",
    )
    add(
        "--calibration",
        default=default(None),
        metavar="PATH",
        help="calibration file from 'rerank-plugins calibrate' for this model and mode: "
        "scores become calibrated probabilities (default: none, the model's own scores)",
    )


def model_options(
    args: argparse.Namespace,
    *,
    local_only: Mapping[str, str] | None = None,
    remote_only: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``load_scorer`` keyword arguments from the model options in ``args``; an option for
    the other kind of model (``--device`` with a URL, ``--dialect`` with a checkpoint) is
    an :class:`~rerank_plugins.errors.InvalidInputError` naming the flag. ``local_only``
    and ``remote_only`` (dest -> flag) add a subcommand's own such options to the check."""
    remote = is_remote(args.model)
    if remote:
        wrong = {**_LOCAL_ONLY, **(local_only or {})}
    else:
        wrong = {**_REMOTE_ONLY, **(remote_only or {})}
    given = [flag for name, flag in wrong.items() if getattr(args, name, None) is not None]
    if given:
        where = "local models" if remote else "http(s) endpoints"
        verb = "applies" if len(given) == 1 else "apply"
        raise InvalidInputError(f"{', '.join(given)} only {verb} to {where}")
    names = (
        ("dialect", "instruction")
        if remote
        else ("device", "dtype", "max_length", "batch_tokens", "threads")
    )
    options = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if not remote:
        options.update(
            {n: getattr(args, n) for n in _LOCAL_PASSED if getattr(args, n, None) is not None}
        )
    cascade, keep = getattr(args, "cascade", None), getattr(args, "keep", None)
    if cascade is not None and getattr(args, "exit_layer", None) is not None:
        raise InvalidInputError("--cascade and --exit-layer both use --keep: give one of them")
    if keep is None and (cascade is not None or "exit_layer" in options):
        raise InvalidInputError("a cascade (--exit-layer or --cascade) needs --keep")
    if keep is not None:
        if cascade is None and "exit_layer" not in options:
            raise InvalidInputError("--keep needs --exit-layer or --cascade")
        options["keep"] = keep
    if cascade is not None:
        options["cascade"] = cascade
    if getattr(args, "calibration", None) is not None:
        options["calibration"] = args.calibration
    return options
