"""``rerank-plugins score INPUT -o OUTPUT``: resumable bulk scoring of a Parquet/JSONL file
on this machine (:func:`rerank_plugins.bulk.score_file`) or on a Ray cluster with ``--ray``
(:func:`rerank_plugins.ray.score_file_on_ray`)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, TextIO

from rerank_plugins.bulk import BulkInterrupted, score_file
from rerank_plugins.cli.model_options import add_model_options, model_options
from rerank_plugins.errors import InvalidInputError

__all__ = ["add_score_arguments", "run", "score_options"]


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rerank-plugins score``.

    The model options (``--model``, ``--device``, ...) have no default here: the top-level
    parser holds them (so they may come before the subcommand too) with their defaults.
    """
    keep = argparse.SUPPRESS
    parser.add_argument("input", help="a .parquet or .jsonl file, one row per pair or per query")
    parser.add_argument("-o", "--output", required=True, help="output directory (shards)")
    parser.add_argument("--query-column", default="query", help="default: query")
    parser.add_argument(
        "--document-column",
        default="text",
        help="a string (one pair per row) or a list of strings (default: text)",
    )
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument(
        "--shard-rows", type=int, default=10_000, help="rows per output shard (default 10000)"
    )
    parser.add_argument(
        "--drop-text", action="store_true", help="leave the query and document out of the output"
    )
    # The model options of every subcommand (one definition); SUPPRESS defaults, since the
    # top-level parser holds them with their defaults.
    add_model_options(parser.add_argument_group("model options"), defaults=False)
    parser.add_argument(
        "--overflow",
        choices=["truncate", "error", "chunk"],
        default=keep,
        help="documents over the window: truncate and flag (default), record as errors, "
        "or score them in token windows (chunk)",
    )
    parser.add_argument("--api-key", default=keep, help="remote endpoint key")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=keep,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=keep, help="log each shard (INFO)"
    )
    ray = parser.add_argument_group("Ray (rerank-plugins[ray])")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (ADDRESS, or RAY_ADDRESS / a local one when omitted; "
        "write --ray=ADDRESS before INPUT)",
    )
    ray.add_argument("--num-gpus", type=float, help="GPUs per actor (default: 1 if any)")
    ray.add_argument(
        "--num-cpus",
        type=float,
        help="CPUs per actor (default: (cluster CPUs - 1) / actors, at most 1: one CPU stays "
        "free for reading)",
    )
    ray.add_argument("--concurrency", type=int, help="actors (default: one per GPU, else 1)")
    ray.add_argument("--batch-size", type=int, default=512, help="rows per batch (default 512)")


def score_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scorer options given on the ``score`` command line (``load_scorer`` options)."""
    options = model_options(args, remote_only={"api_key": "--api-key"})
    options["overflow"] = getattr(args, "overflow", None) or "truncate"
    if getattr(args, "api_key", None) is not None:
        options["api_key"] = args.api_key
    return options


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    """``rerank-plugins score``: resumable shards on this machine, or a Ray cluster (--ray).

    A file that cannot be read or written (a read-only or full disk, ...) is an
    :class:`InvalidInputError` naming it (one line, exit 2); Ctrl-C says how many shards
    are complete and exits 130."""
    try:
        return _run(args, stdout)
    except OSError as exc:
        where = exc.filename or args.output
        raise InvalidInputError(f"{where}: {exc.strerror or exc}") from exc


def _run(args: argparse.Namespace, stdout: TextIO) -> int:
    common: dict[str, Any] = {
        "model": args.model,
        "query_column": args.query_column,
        "document_column": args.document_column,
        "keep_text": not args.drop_text,
        "model_options": score_options(args),
    }
    if args.ray is not None:
        if args.resume:
            raise InvalidInputError("--resume is for the single-machine run; rerun --ray whole")
        from rerank_plugins.ray import score_file_on_ray

        ray_options = {"num_gpus": args.num_gpus, "num_cpus": args.num_cpus}
        # Standard output carries the JSON summary only: anything Ray prints goes to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            summary = score_file_on_ray(
                args.input,
                args.output,
                address=args.ray or None,
                concurrency=args.concurrency,
                batch_size=args.batch_size,
                progress=args.progress,
                **ray_options,
                **common,
            )
    else:
        try:
            summary = score_file(
                args.input,
                args.output,
                shard_rows=args.shard_rows,
                resume=args.resume,
                progress=args.progress,
                **common,
            )
        except BulkInterrupted as exc:
            sys.stderr.write(
                f"interrupted: {exc.shards_written} of {exc.shards_total} shards written; "
                "rerun with --resume\n"
            )
            return 130  # 128 + SIGINT, as a shell reports it
    stdout.write(summary.to_json() + "\n")
    return 0
