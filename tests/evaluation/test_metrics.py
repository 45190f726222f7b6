"""Metrics equal trec_eval's (through pytrec_eval) on hand-built runs; significance tests."""

from __future__ import annotations

import math

import pytest

from rerank_plugins.evaluation.data import ordered
from rerank_plugins.evaluation.metrics import MEASURES, compare, mean, per_query

pytrec_eval = pytest.importorskip("pytrec_eval")
ir_measures = pytest.importorskip("ir_measures")

QRELS = {
    "ties": {"a": 2, "b": 0, "c": 1, "d": 1, "e": 0},
    "unjudged": {"a": 1, "z": 2},  # z is never retrieved; the run has documents not judged
    "none-relevant": {"a": 0, "b": 0},  # a query without any relevant document
    "deep": {f"d{i}": int(i % 7 == 3) for i in range(150)},
}
RUN = {
    "ties": {"a": 1.0, "b": 2.0, "c": 2.0, "d": 2.0, "e": 0.5, "x": 2.0},
    "unjudged": {"u1": 3.0, "a": 2.0, "u2": 1.0},
    "none-relevant": {"a": 1.0, "b": 0.5, "c": 0.2},
    "deep": {f"d{i}": 1.0 / (1 + i // 3) for i in range(150)},  # ties in threes, > 100 docs
}


def _trec_eval(qrels: dict, run: dict) -> dict[str, dict[str, float]]:
    """pytrec_eval directly: nDCG@10, R@10, R@100; RR@10 as recip_rank of each ranking cut
    to its first 10 in trec_eval's own order (score, then document id, descending)."""
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10", "recall.100"})
    full = evaluator.evaluate(run)
    top10 = {q: dict(ordered(docs)[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    return {
        "nDCG@10": {q: v["ndcg_cut_10"] for q, v in full.items()},
        "R@10": {q: v["recall_10"] for q, v in full.items()},
        "R@100": {q: v["recall_100"] for q, v in full.items()},
        "RR@10": {q: v["recip_rank"] for q, v in rr.items()},
    }


def test_metrics_equal_pytrec_eval_on_hand_built_runs() -> None:
    ours = per_query(QRELS, RUN)
    reference = _trec_eval(QRELS, RUN)
    for measure in MEASURES:
        for query in QRELS:
            assert ours[measure][query] == pytest.approx(reference[measure][query], abs=1e-12), (
                measure,
                query,
            )


def test_a_hand_computed_value_agrees() -> None:
    # "unjudged": relevant a (1) at rank 2 and z (2) never retrieved.
    ours = per_query(QRELS, RUN)
    dcg = 1 / math.log2(3)  # trec_eval's gain is the grade itself
    ideal = 2 + 1 / math.log2(3)  # z (2) at rank 1, a (1) at rank 2
    assert ours["nDCG@10"]["unjudged"] == pytest.approx(dcg / ideal)
    assert ours["RR@10"]["unjudged"] == 0.5
    assert ours["R@10"]["unjudged"] == 0.5
    assert ours["nDCG@10"]["none-relevant"] == 0.0


def test_an_ordered_run_is_scored_in_its_listed_order() -> None:
    qrels = {"q": {"a": 1}}
    assert per_query(qrels, {"q": [("b", 5.0), ("a", 5.0)]})["RR@10"]["q"] == 0.5
    assert per_query(qrels, {"q": [("a", 5.0), ("b", 5.0)]})["RR@10"]["q"] == 1.0


def test_judged_queries_the_run_lacks_count_as_zero() -> None:
    ours = per_query(QRELS, {"ties": RUN["ties"]})
    assert set(ours["nDCG@10"]) == set(QRELS)
    assert ours["nDCG@10"]["deep"] == 0.0 and ours["nDCG@10"]["ties"] > 0


def test_the_mean_is_what_ir_measures_aggregates() -> None:
    untied = {
        q: {d: float(-i) for i, (d, _) in enumerate(ordered(docs))} for q, docs in RUN.items()
    }
    ours = per_query(QRELS, untied)
    parsed = [ir_measures.parse_measure(m) for m in MEASURES]
    aggregate = ir_measures.calc_aggregate(parsed, QRELS, untied)
    for measure, name in zip(parsed, MEASURES, strict=True):
        assert mean(ours[name]) == pytest.approx(aggregate[measure])


def test_significance_is_none_without_differences_and_small_for_a_clear_gain() -> None:
    base = {f"q{i}": 0.2 + 0.01 * (i % 5) for i in range(30)}
    assert compare(base, base) == {
        "mean_difference": 0.0,
        "t_test_p": None,
        "randomisation_p": None,
    }
    better = {q: v + 0.3 + 0.01 * (i % 3) for i, (q, v) in enumerate(base.items())}
    result = compare(base, better, resamples=999)
    assert result["mean_difference"] == pytest.approx(0.31, abs=0.01)
    assert result["t_test_p"] is not None and result["t_test_p"] < 1e-6
    assert result["randomisation_p"] is not None and result["randomisation_p"] < 0.01
    noise = {q: v + (0.01 if i % 2 else -0.01) for i, (q, v) in enumerate(base.items())}
    assert compare(base, noise, resamples=999)["randomisation_p"] > 0.5
