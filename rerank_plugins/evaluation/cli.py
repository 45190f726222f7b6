"""The ``evaluate`` and ``calibrate`` subcommands: argument definitions and their runs.

The command line adds them with :func:`add_evaluate_command` and
:func:`add_calibrate_command`; each sets ``run_command`` (``(args, stdout) -> status``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, TextIO

from rerank_plugins.errors import InvalidInputError, UnknownOptionError
from rerank_plugins.evaluation.data import Collection, Run, check_run, load_collection, read_run
from rerank_plugins.evaluation.first_stage import FIRST_STAGES, first_stage_run
from rerank_plugins.evaluation.run import SystemSpec, evaluate, parse_model_spec
from rerank_plugins.loading import load_scorer
from rerank_plugins.scoring import Scorer

__all__ = ["add_calibrate_command", "add_evaluate_command"]

logger = logging.getLogger(__name__)

_SPEC_HELP = (
    "a model: anything load_scorer takes (hub id, checkpoint directory, http(s) endpoint), "
    'then key=value options in the same quoted argument, e.g. "DIR dtype=int8 layer=8 '
    "name=int8-l8\" (name= is the system's name in the reports)"
)


def _add_inputs(parser: argparse.ArgumentParser) -> None:
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
    _add_inputs(parser)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        dest="models",
        metavar="SPEC",
        help=_SPEC_HELP + "; repeat for several systems",
    )
    parser.add_argument(
        "--calibration",
        default=None,
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
    parser.set_defaults(run_command=_run_evaluate)
    return parser


def add_calibrate_command(commands: Any) -> argparse.ArgumentParser:
    """``rerank-plugins calibrate``: Platt scaling for one model and mode."""
    parser = commands.add_parser(
        "calibrate",
        help="fit a calibration file (Platt scaling) so scores are probabilities",
        description="Score labelled pairs (JSONL query/document/label, or judgments + a run) "
        "with the model's raw score, fit sigmoid(a*raw+b), report ECE on a held-out split.",
    )
    _add_inputs(parser)
    parser.add_argument("--pairs", help="JSONL of {query, document, label (0/1)}")
    parser.add_argument("--model", required=True, metavar="SPEC", help=_SPEC_HELP)
    parser.add_argument(
        "--relevant", type=int, default=1, help="lowest grade counted relevant (default 1)"
    )
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="fraction held out to measure ECE (default 0.3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("-o", "--output", required=True, help="the calibration file to write")
    parser.add_argument("--plot", metavar="PATH", help="write a reliability plot (PNG)")
    parser.set_defaults(run_command=_run_calibrate)
    return parser


def _collection(args: argparse.Namespace) -> Collection:
    if args.data is None and not (args.corpus and args.queries and args.qrels):
        raise InvalidInputError("give a BEIR directory, or --corpus, --queries and --qrels")
    return load_collection(
        args.data, corpus=args.corpus, queries=args.queries, qrels=args.qrels, split=args.split
    )


def _first_stage(args: argparse.Namespace, collection: Collection) -> tuple[Run, dict[str, Any]]:
    if (args.run is None) == (args.first_stage is None):
        raise InvalidInputError("give exactly one of --run FILE and --first-stage bm25|minilm")
    if args.depth <= 0:
        raise InvalidInputError(f"--depth must be positive, got {args.depth}")
    if args.run is not None:
        return check_run(read_run(args.run), collection), {}
    judged = {q: collection.queries[q] for q in collection.judged_queries}
    k = args.k if args.k is not None else max(100, args.depth)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run = first_stage_run(args.first_stage, collection.corpus, judged, k=k)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cost = {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "queries": len(judged),
        "queries_per_s": round(len(judged) / wall, 3) if wall > 0 else None,
    }
    return check_run(run, collection), cost


def _load(system: SystemSpec, calibration: str | None) -> Scorer:
    options = dict(system.options)
    if calibration is not None and "calibration" not in options:
        options["calibration"] = calibration
    return load_scorer(system.spec, **options)


def _run_evaluate(args: argparse.Namespace, stdout: TextIO) -> int:
    from rerank_plugins.evaluation import report

    collection = _collection(args)
    run, cost = _first_stage(args, collection)
    specs = [parse_model_spec(text) for text in args.models]
    systems = [(s.name, _load(s, args.calibration)) for s in specs]
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    result = evaluate(
        collection, run, systems, depth=args.depth, first_stage_cost=cost, progress=progress
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


def _raw_scorer(system: SystemSpec) -> tuple[Scorer, dict[str, Any], dict[str, Any]]:
    """The scorer giving its raw score (a local cross-encoder's logit), its options, and
    the options that made the score raw (recorded in the calibration file)."""
    if "calibration" in system.options:
        raise InvalidInputError("calibrate fits on the raw score: drop calibration=")
    remote = system.spec.startswith(("http://", "https://"))
    if not remote and "output" not in system.options:
        raw = {"output": "logit"}
        try:
            options = {**raw, **system.options}
            return load_scorer(system.spec, **options), options, raw
        except (UnknownOptionError, TypeError):
            logger.info("%s takes no output= option: its score is raw already", system.spec)
    return load_scorer(system.spec, **system.options), dict(system.options), {}


def _run_calibrate(args: argparse.Namespace, stdout: TextIO) -> int:
    from rerank_plugins.evaluation import calibration as fitting

    if args.pairs is not None:
        if args.data or args.qrels or args.run or args.first_stage:
            raise InvalidInputError("give --pairs, or judgments with a run, not both")
        pairs = fitting.read_pairs(args.pairs)
    else:
        collection = _collection(args)
        run, _ = _first_stage(args, collection)
        pairs = fitting.pairs_from_run(collection, run, depth=args.depth, relevant=args.relevant)
    system = parse_model_spec(args.model)
    scorer, options, raw = _raw_scorer(system)
    cal, held_out = fitting.fit_calibration(
        scorer, pairs, options=options, raw_options=raw, holdout=args.holdout, seed=args.seed
    )
    cal.save(args.output)
    if args.plot:
        fitting.reliability_plot(held_out, args.plot)
    summary = {"output": args.output, "a": cal.a, "b": cal.b, **cal.fit, "mode": cal.mode}
    stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
