"""Retrieval metrics (computed by ``ir-measures``) and paired significance (``scipy``).

``ir-measures`` picks its provider per measure: nDCG@10 and R@k come from ``pytrec_eval``
(trec_eval's own code), RR@10 from its ``msmarco`` provider. Queries a run lacks are
skipped by those tools; here they are kept with the value 0, so that every judged query
counts (as trec_eval's ``-c`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.evaluation.data import Qrels, Run, ordered

__all__ = ["MEASURES", "compare", "mean", "per_query"]

MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@10", "R@100")
"""The measures reported, by their ``ir-measures`` names."""

PerQuery = dict[str, dict[str, float]]
"""``{measure: {query id: value}}``."""


def _ir_measures() -> Any:
    return require("ir_measures")


def per_query(
    qrels: Qrels,
    run: Run | Mapping[str, Mapping[str, float]],
    *,
    measures: Sequence[str] = MEASURES,
) -> PerQuery:
    """``{measure: {query id: value}}`` for every judged query (0 where the run has none).

    ``run`` is a :data:`~rerank_plugins.evaluation.data.Run` (best first, ties broken as
    listed) or a plain ``{query id: {document id: score}}`` (ties broken as trec_eval
    does: document id descending, :func:`~rerank_plugins.evaluation.data.ordered`). Either
    way the tools get rank-derived scores without ties: ``ir-measures``' msmarco provider,
    which computes RR@k, would otherwise break ties its own way and disagree with trec_eval.
    """
    ir_measures = _ir_measures()
    parsed = [ir_measures.parse_measure(m) for m in measures]
    scored: dict[str, dict[str, float]] = {}
    for qid, docs in run.items():
        listed = ordered(docs) if isinstance(docs, Mapping) else docs
        scored[qid] = {d: float(len(listed) - i) for i, (d, _) in enumerate(listed)}
    scored = {q: d for q, d in scored.items() if d and q in qrels}
    out: PerQuery = {m: dict.fromkeys(qrels, 0.0) for m in measures}
    names = {str(m): name for m, name in zip(parsed, measures, strict=True)}
    for metric in ir_measures.iter_calc(parsed, qrels, scored):
        out[names[str(metric.measure)]][metric.query_id] = float(metric.value)
    return out


def mean(values: Mapping[str, float]) -> float:
    """The mean over queries (what ``ir_measures.calc_aggregate`` reports)."""
    return math.fsum(values.values()) / len(values) if values else 0.0


def compare(
    baseline: Mapping[str, float],
    system: Mapping[str, float],
    *,
    resamples: int = 9999,
    seed: int = 0,
) -> dict[str, float | None]:
    """Paired significance of ``system`` against ``baseline`` over the same queries.

    ``t_test_p``: two-sided paired t-test (``scipy.stats.ttest_rel``);
    ``randomisation_p``: two-sided paired randomisation (sign-flip) test of the mean
    difference (``scipy.stats.permutation_test``, ``resamples`` draws, ``seed``). Both are
    ``None`` when every difference is 0 (nothing to test).
    """
    stats = require("scipy.stats")
    numpy = require("numpy")
    queries = sorted(baseline)
    a = numpy.array([baseline[q] for q in queries])
    b = numpy.array([system[q] for q in queries])
    diff = b - a
    result: dict[str, float | None] = {"mean_difference": float(diff.mean()) if len(a) else 0.0}
    if len(a) < 2 or not numpy.any(diff):
        return {**result, "t_test_p": None, "randomisation_p": None}
    t_p = float(stats.ttest_rel(b, a).pvalue)
    test = stats.permutation_test(
        (b, a),
        lambda x, y: numpy.mean(x - y),
        permutation_type="samples",
        n_resamples=resamples,
        alternative="two-sided",
        rng=numpy.random.default_rng(seed),
    )
    return {
        **result,
        "t_test_p": t_p if math.isfinite(t_p) else None,
        "randomisation_p": float(test.pvalue),
    }
