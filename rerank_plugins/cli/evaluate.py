"""``rerank-plugins evaluate``: rerank a first-stage run with each ``--model`` and report
quality (:mod:`rerank_plugins.evaluation`), significance and cost.

:func:`add_evaluate_command` adds the subcommand; :func:`add_inputs`, :func:`judgments`
and :func:`first_stage` (the judgments and the first stage) are shared with
:mod:`rerank_plugins.cli.calibrate`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, TextIO

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.evaluation.data import Collection, Run, check_run, load_collection, read_run
from rerank_plugins.evaluation.first_stage import FIRST_STAGES, first_stage_run
from rerank_plugins.evaluation.run import SystemSpec, evaluate, parse_model_spec
from rerank_plugins.loading import load_model
from rerank_plugins.scoring import Scorer

__all__ = ["SPEC_HELP", "add_evaluate_command", "add_inputs", "first_stage", "judgments", "run"]

logger = logging.getLogger(__name__)

SPEC_HELP = (
    "a model: anything load_scorer takes (hub id, checkpoint directory, http(s) endpoint), "
    'then key=value options in the same quoted argument, e.g. "DIR dtype=int8 layer=8 '
    "name=int8-l8\" (name= is the system's name in the reports; exit_layer=E keep=K or "
    "cascade=SPEC keep=K make a cascade)"
)


def add_inputs(parser: argparse.ArgumentParser) -> None:
    """The judgment and first-stage options of ``evaluate`` and ``calibrate``."""
    data = parser.add_argument_group("judgments (BEIR directory, or each file)")
    data.add_argument("data", nargs="?", help="BEIR directory: corpus.jsonl, queries.jsonl, qrels/")
    data.add_argument("--corpus", help="corpus.jsonl (_id, title, text)")
    data.add_argument("--queries", help="queries.jsonl (_id, text)")
    data.add_argument("--qrels", help="qrels: BEIR TSV with header, or TREC 'qid 0 docid rel'")
    data.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    first = parser.add_argument_group("first stage (one of)")
    first.add_argument("--run", help="TREC run file: qid Q0 docid rank score tag")
    first.add_argument("--first-stage", choices=FIRST_STAGES, help="built-in first stage")
    first.add_argument(
        "--k",
        type=int,
        default=None,
        help="documents per query from --first-stage (default: max(100, --depth))",
    )
    parser.add_argument("--depth", type=int, default=100, help="rerank the top N (default 100)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log progress (INFO) to stderr",
    )


def add_evaluate_command(commands: Any) -> argparse.ArgumentParser:
    """``rerank-plugins evaluate``: quality, significance and cost of each ``--model``."""
    parser = commands.add_parser(
        "evaluate",
        help="evaluate rerankers on BEIR/TREC judgments: quality, significance, cost",
        description="Rerank the top --depth documents of a first-stage run with each --model "
        "and report nDCG@10, RR@10, R@10, R@100 (ir-measures), paired significance against "
        "the first stage, and cost.",
    )
    add_inputs(parser)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        dest="models",
        metavar="SPEC",
        help=SPEC_HELP + "; repeat for several systems",
    )
    parser.add_argument(
        "--calibration",
        default=argparse.SUPPRESS,  # also accepted before the subcommand (top-level option)
        help="calibration file for every --model without its own calibration=",
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the JSON report")
    parser.add_argument("--markdown", metavar="PATH", help="write a Markdown table")
    parser.add_argument("--plot", metavar="PATH", help="write a quality/latency PNG")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    return parser


def judgments(args: argparse.Namespace) -> Collection:
    """The collection named by the input options (a BEIR directory, or each file)."""
    if args.data is None and not (args.corpus and args.queries and args.qrels):
        raise InvalidInputError("give a BEIR directory, or --corpus, --queries and --qrels")
    return load_collection(
        args.data, corpus=args.corpus, queries=args.queries, qrels=args.qrels, split=args.split
    )


def first_stage(args: argparse.Namespace, data: Collection) -> tuple[Run, dict[str, Any]]:
    """The checked first-stage run (``--run`` or ``--first-stage``) and its cost (empty for
    a run file)."""
    if (args.run is None) == (args.first_stage is None):
        raise InvalidInputError("give exactly one of --run FILE and --first-stage bm25|minilm")
    if args.depth <= 0:
        raise InvalidInputError(f"--depth must be positive, got {args.depth}")
    if args.run is not None:
        return check_run(read_run(args.run), data), {}
    judged = {q: data.queries[q] for q in data.judged_queries}
    k = args.k if args.k is not None else max(100, args.depth)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = first_stage_run(args.first_stage, data.corpus, judged, k=k)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cost = {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "queries": len(judged),
        "queries_per_s": round(len(judged) / wall, 3) if wall > 0 else None,
    }
    return check_run(run, data), cost


def _load(system: SystemSpec, calibration: str | None) -> Scorer:
    """``load_model``: ``load_scorer``'s options, and a two-model cascade with ``cascade=SPEC
    keep=K`` (a matryoshka cascade, ``exit_layer=E keep=K``, is ``load_scorer``'s own)."""
    options = dict(system.options)
    if "cascade" in options and "keep" not in options:
        raise InvalidInputError(f"--model {system.name!r}: cascade= needs keep=")
    if calibration is not None and "calibration" not in options:
        options["calibration"] = calibration
    return load_model(system.spec, options)


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    from rerank_plugins.evaluation import report

    data = judgments(args)
    ranking, cost = first_stage(args, data)
    specs = [parse_model_spec(text) for text in args.models]
    if not specs:  # (a --model before the subcommand is the rerank command's option)
        logger.warning("no --model after 'evaluate': only the first stage is evaluated")
    systems = [(s.name, _load(s, getattr(args, "calibration", None))) for s in specs]
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = evaluate(
        data, ranking, systems, depth=args.depth, first_stage_cost=cost, progress=progress
    )
    stdout.write(report.table(result))
    if args.json_path:
        report.write_json(result, args.json_path)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as out:
            out.write(report.markdown(result))
    if args.plot:
        report.plot(result, args.plot)
    return 0
