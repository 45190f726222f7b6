"""The ``rerank-plugins`` command line: one parser for every subcommand.

- ``rerank`` (:mod:`rerank_plugins.cli.rerank`): rank documents for a query;
- ``serve`` (:mod:`rerank_plugins.cli.serve`): an HTTP server, or Ray Serve with ``--ray``;
- ``score`` (:mod:`rerank_plugins.cli.score`): resumable bulk scoring of a file;
- ``evaluate`` (:mod:`rerank_plugins.cli.evaluate`): quality, significance and cost of
  models on BEIR/TREC judgments;
- ``calibrate`` (:mod:`rerank_plugins.cli.calibrate`): a calibration file (Platt scaling);
- the model options they share: :mod:`rerank_plugins.cli.model_options`.

Every argparse definition lives in this package; the modules it calls
(:mod:`rerank_plugins.bulk`, :mod:`rerank_plugins.ray`, :mod:`rerank_plugins.serve`) take
plain options. Options are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from rerank_plugins import __version__
from rerank_plugins.cli import calibrate, evaluate, rerank, score, serve
from rerank_plugins.errors import RerankError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-plugins",
        description="Long-context reranking from the command line. "
        "Options are accepted before or after the subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    rerank.add_rerank_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True)
    rr = commands.add_parser("rerank", help="rank documents by relevance to a query")
    rr.add_argument("query", help="the query")
    rr.add_argument("documents", nargs="*", help="documents (or use --file / stdin)")
    # SUPPRESS defaults: a value given before the subcommand is not reset by the
    # subcommand's parser.
    rerank.add_rerank_options(rr, defaults=False)
    serve.add_serve_command(commands)
    sc = commands.add_parser("score", help="score a Parquet/JSONL file of pairs (resumable)")
    score.add_score_arguments(sc)
    evaluate.add_evaluate_command(commands)
    calibrate.add_calibrate_command(commands)
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (2 for a rerank error)."""
    args = _parser().parse_args(argv)
    if args.command == "serve":  # a long-running server: its own logging and errors
        return serve.run(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "score":
            return score.run(args, stdout or sys.stdout)
        if args.command == "evaluate":
            return evaluate.run(args, stdout or sys.stdout)
        if args.command == "calibrate":
            return calibrate.run(args, stdout or sys.stdout)
        return rerank.run(args, stdout or sys.stdout, stdin or sys.stdin)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins: error: {exc}\n")
        return 2
