"""``calibrate``: fit Platt scaling on a scorer's raw scores, measure ECE, write the file.

Labelled pairs come from a JSONL file (``query``, ``document``, ``label`` 0/1) or from
judgments and a run (:func:`pairs_from_run`). The pairs are split (seeded) into a fitting
part and a held-out part; ``sklearn.linear_model.LogisticRegression`` fits
``P(relevant) = sigmoid(a * raw + b)`` on the first; the expected calibration error
(:func:`expected_calibration_error`) is reported on the held-out part before (the raw
score read as a probability: ``sigmoid`` of a logit, a probability as is; none for a
MaxSim sum) and after.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.calibration import Calibration, calibration_identity
from rerank_plugins.errors import EvaluationDataError, InvalidInputError
from rerank_plugins.evaluation.data import Collection, Run
from rerank_plugins.scoring import Scorer, score_groups

__all__ = [
    "LabelledPair",
    "expected_calibration_error",
    "fit_calibration",
    "fit_platt",
    "pairs_from_run",
    "read_pairs",
    "reliability_plot",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledPair:
    query: str
    document: str
    label: int


def read_pairs(path: str | Path) -> list[LabelledPair]:
    """Pairs from a JSONL file of ``{"query", "document", "label"}`` (label 0 or 1)."""
    path = Path(path)
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationDataError(f"cannot read {path}: {exc}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationDataError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("query"), str)
            or not isinstance(row.get("document"), str)
        ):
            raise EvaluationDataError(f"{path}:{number}: needs string 'query' and 'document'")
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, float):
            raise EvaluationDataError(f"{path}:{number}: 'label' must be 0 or 1, got {label!r}")
        pairs.append(LabelledPair(row["query"], row["document"], int(label)))
    if not pairs:
        raise EvaluationDataError(f"{path} holds no pairs")
    return pairs


def pairs_from_run(
    collection: Collection, run: Run, *, depth: int = 100, relevant: int = 1
) -> list[LabelledPair]:
    """The judged documents among each query's top ``depth``: label 1 when the grade is
    at least ``relevant``. Unjudged documents are not used (their count is logged)."""
    pairs: list[LabelledPair] = []
    unjudged = 0
    for qid, docs in run.items():
        judged = collection.qrels.get(qid, {})
        for docid, _ in docs[:depth]:
            if docid not in judged:
                unjudged += 1
                continue
            pairs.append(
                LabelledPair(
                    collection.queries[qid],
                    collection.corpus[docid],
                    int(judged[docid] >= relevant),
                )
            )
    if unjudged:
        logger.warning("%d unjudged pairs of the run's top %d are not used", unjudged, depth)
    return pairs


def expected_calibration_error(
    probabilities: Sequence[float], labels: Sequence[int], *, bins: int = 10
) -> float:
    """ECE: ``sum_k n_k / N * |mean(label) - mean(p)|`` over ``bins`` equal-width bins.

    >>> expected_calibration_error([0.2, 0.8], [0, 1])
    0.2
    """
    numpy = require("numpy")
    p = numpy.asarray(probabilities, dtype=float)
    y = numpy.asarray(labels, dtype=float)
    if len(p) == 0:
        raise InvalidInputError("no pairs to measure")
    which = numpy.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        mask = which == k
        if mask.any():
            total += mask.sum() / len(p) * abs(y[mask].mean() - p[mask].mean())
    return round(float(total), 12)


def fit_platt(raw: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """``(a, b)`` of ``P(label=1) = sigmoid(a * raw + b)`` by (practically unpenalised)
    logistic regression (scikit-learn, lbfgs)."""
    numpy = require("numpy")
    linear_model = require("sklearn.linear_model")
    y = numpy.asarray(labels, dtype=int)
    if len(set(y.tolist())) < 2:
        raise EvaluationDataError("the fitting pairs need both labels (some 0, some 1)")
    model = linear_model.LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
    model.fit(numpy.asarray(raw, dtype=float).reshape(-1, 1), y)
    return float(model.coef_[0][0]), float(model.intercept_[0])


def _as_probability(value: float, kind: str) -> float | None:
    if kind == "probability":
        return value
    if kind == "logit":
        return 1.0 / (1.0 + math.exp(-value)) if value > -700 else 0.0
    return None  # a MaxSim sum is no probability


def fit_calibration(
    scorer: Scorer,
    pairs: Sequence[LabelledPair],
    *,
    options: dict[str, Any] | None = None,
    raw_options: dict[str, Any] | None = None,
    holdout: float = 0.3,
    seed: int = 0,
) -> tuple[Calibration, dict[str, Any]]:
    """Score ``pairs`` with ``scorer`` (loaded to give raw scores), fit on ``1 - holdout``
    of them, measure on the rest. Returns the calibration and the held-out figures
    (``raw``, ``labels`` and ``before``/``after`` probabilities, for the plot)."""
    if not 0.0 < holdout < 1.0:
        raise InvalidInputError(f"holdout must be between 0 and 1, got {holdout}")
    groups = [(p.query, [p.document]) for p in pairs]
    scores = [g[0] for g in score_groups(scorer, groups)]
    kinds = {s.kind for s in scores}
    if len(kinds) != 1:
        raise EvaluationDataError(f"the scorer gave scores of several kinds: {sorted(kinds)}")
    kind = kinds.pop()
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = round(len(order) * (1.0 - holdout))
    fit_ids, test_ids = order[:cut], order[cut:]
    if not test_ids:
        raise EvaluationDataError(f"{len(pairs)} pairs leave nothing to hold out")
    raw = [s.value for s in scores]
    labels = [p.label for p in pairs]
    a, b = fit_platt([raw[i] for i in fit_ids], [labels[i] for i in fit_ids])
    model, mode = calibration_identity(scorer, options)
    cal = Calibration(
        a=a, b=b, model=model, mode={**mode, "raw_kind": kind}, options=dict(raw_options or {})
    )
    test_raw = [raw[i] for i in test_ids]
    test_labels = [labels[i] for i in test_ids]
    before = [_as_probability(v, kind) for v in test_raw]
    after = [cal.probability(v) for v in test_raw]
    ece_before = (
        None
        if any(p is None for p in before)
        else expected_calibration_error([p or 0.0 for p in before], test_labels)
    )
    fit = {
        "pairs": len(pairs),
        "positives": sum(labels),
        "fitted_on": len(fit_ids),
        "held_out": len(test_ids),
        "seed": seed,
        "ece_before": ece_before,
        "ece_after": expected_calibration_error(after, test_labels),
    }
    cal = Calibration(a=a, b=b, model=cal.model, mode=cal.mode, options=cal.options, fit=fit)
    return cal, {"raw": test_raw, "labels": test_labels, "before": before, "after": after}


def reliability_plot(held_out: dict[str, Any], path: str | Path, *, bins: int = 10) -> None:
    """Mean label against mean predicted probability per bin, before and after."""
    require("matplotlib")
    numpy = require("numpy")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 4.4), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    y = numpy.asarray(held_out["labels"], dtype=float)
    for key, colour in (("before", "tab:red"), ("after", "tab:blue")):
        values = held_out[key]
        if any(v is None for v in values):
            continue
        p = numpy.asarray(values, dtype=float)
        which = numpy.minimum((p * bins).astype(int), bins - 1)
        xs = [p[which == k].mean() for k in range(bins) if (which == k).any()]
        ys = [y[which == k].mean() for k in range(bins) if (which == k).any()]
        axes.plot(xs, ys, marker="o", color=colour, label=key)
    axes.set_xlabel("predicted probability")
    axes.set_ylabel("fraction relevant")
    axes.set_title("reliability (held-out pairs)")
    axes.legend(loc="best", fontsize=8)
    figure.savefig(str(path), dpi=110)
