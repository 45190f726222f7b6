"""``rerank-plugins calibrate``: fit Platt scaling on a model's raw score from labelled
pairs (:mod:`rerank_plugins.evaluation.calibration`) and write the calibration file that
``--calibration`` / ``load_scorer(calibration=)`` read."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, TextIO

from rerank_plugins.cli.evaluate import SPEC_HELP, add_inputs, first_stage, judgments
from rerank_plugins.errors import InvalidInputError, UnknownOptionError
from rerank_plugins.evaluation.run import SystemSpec, parse_model_spec
from rerank_plugins.loading import is_remote, load_scorer
from rerank_plugins.scoring import Scorer

__all__ = ["add_calibrate_command", "run"]

logger = logging.getLogger(__name__)


def add_calibrate_command(commands: Any) -> argparse.ArgumentParser:
    """``rerank-plugins calibrate``: Platt scaling for one model and mode."""
    parser = commands.add_parser(
        "calibrate",
        help="fit a calibration file (Platt scaling) so scores are probabilities",
        description="Score labelled pairs (JSONL query/document/label, or judgments + a run) "
        "with the model's raw score, fit sigmoid(a*raw+b), report ECE on a held-out split.",
    )
    add_inputs(parser)
    parser.add_argument("--pairs", help="JSONL of {query, document, label (0/1)}")
    parser.add_argument("--model", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument(
        "--relevant", type=int, default=1, help="lowest grade counted relevant (default 1)"
    )
    parser.add_argument(
        "--holdout", type=float, default=0.3, help="fraction held out to measure ECE (default 0.3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument("-o", "--output", required=True, help="the calibration file to write")
    parser.add_argument("--plot", metavar="PATH", help="write a reliability plot (PNG)")
    return parser


def _raw_scorer(system: SystemSpec) -> tuple[Scorer, dict[str, Any], dict[str, Any]]:
    """The scorer giving its raw score (a local cross-encoder's logit), its options, and
    the options that made the score raw (recorded in the calibration file)."""
    if "calibration" in system.options:
        raise InvalidInputError("calibrate fits on the raw score: drop calibration=")
    remote = is_remote(system.spec)
    if not remote and "output" not in system.options:
        raw = {"output": "logit"}
        try:
            options = {**raw, **system.options}
            return load_scorer(system.spec, **options), options, raw
        except (UnknownOptionError, TypeError):
            logger.info("%s takes no output= option: its score is raw already", system.spec)
    return load_scorer(system.spec, **system.options), dict(system.options), {}


def run(args: argparse.Namespace, stdout: TextIO) -> int:
    from rerank_plugins.evaluation import calibration as fitting

    if args.pairs is not None:
        if args.data or args.qrels or args.run or args.first_stage:
            raise InvalidInputError("give --pairs, or judgments with a run, not both")
        pairs = fitting.read_pairs(args.pairs)
    else:
        data = judgments(args)
        ranking, _ = first_stage(args, data)
        pairs = fitting.pairs_from_run(data, ranking, depth=args.depth, relevant=args.relevant)
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
