"""An :class:`~rerank_plugins.evaluation.run.Evaluation` as a table, JSON, Markdown or a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.evaluation.metrics import MEASURES
from rerank_plugins.evaluation.run import FIRST_STAGE, Evaluation, SystemResult

__all__ = ["markdown", "pareto_front", "plot", "table", "write_json"]

_COST = (
    ("queries_per_s", "q/s"),
    ("tokens_per_s", "tok/s"),
    ("p50_ms", "p50 ms"),
    ("p95_ms", "p95 ms"),
)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _marked(result: SystemResult, measure: str) -> str:
    """The mean, with ``*`` when the randomisation test gives p < 0.05 against the first
    stage (``†`` for the t-test alone)."""
    text = _number(result.metrics[measure])
    test = (result.significance or {}).get(measure) or {}
    rand, t = test.get("randomisation_p"), test.get("t_test_p")
    if rand is not None and rand < 0.05:
        return text + "*"
    if t is not None and t < 0.05:
        return text + "†"
    return text


def _rows(evaluation: Evaluation) -> tuple[list[str], list[list[str]]]:
    header = ["system", *MEASURES, *(label for _, label in _COST)]
    rows = [
        [
            s.name,
            *(_marked(s, m) for m in MEASURES),
            *(_number(s.cost.get(key), 1) for key, _ in _COST),
        ]
        for s in evaluation.systems
    ]
    return header, rows


def table(evaluation: Evaluation) -> str:
    """A fixed-width table for the terminal."""
    header, rows = _rows(evaluation)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(_legend(evaluation))
    return "\n".join(lines) + "\n"


def _legend(evaluation: Evaluation) -> str:
    return (
        f"{evaluation.queries} judged queries, top {evaluation.depth} reranked; "
        f"* p < 0.05 against {FIRST_STAGE} (paired randomisation test), † t-test only"
    )


def markdown(evaluation: Evaluation) -> str:
    """A Markdown table (the same figures as :func:`table`)."""
    header, rows = _rows(evaluation)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + _legend(evaluation) + "\n"


def write_json(evaluation: Evaluation, path: str | Path) -> None:
    """``{"systems": [{"name", "metrics", "per_query", "cost", "significance"}, ...]}``."""
    Path(path).write_text(json.dumps(evaluation.to_json(), indent=2) + "\n", encoding="utf-8")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower latency (x) and higher quality (y).

    >>> pareto_front([(1.0, 0.5), (2.0, 0.4), (3.0, 0.9)])
    [0, 2]
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def plot(
    evaluation: Evaluation, path: str | Path, *, measure: str = "nDCG@10", latency: str = "p50_ms"
) -> None:
    """Quality (``measure``) against latency (``latency``: a cost key in ms per query,
    ``p50_ms``, ``p95_ms`` or ``cpu_ms_per_query``) per reranking system, the Pareto front
    joined by a line; the first stage as a horizontal reference line. Drawn with
    matplotlib's Agg backend into a PNG."""
    require("matplotlib")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.subplots()
    systems = [s for s in evaluation.systems if s.name != FIRST_STAGE]
    points = [(float(s.cost.get(latency) or 0.0), s.metrics[measure]) for s in systems]
    front = sorted(pareto_front(points), key=lambda i: points[i][0])
    axes.scatter([p[0] for p in points], [p[1] for p in points], color="tab:blue", zorder=3)
    for system, (x, y) in zip(systems, points, strict=True):
        axes.annotate(system.name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if front:
        axes.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            color="tab:orange",
            linestyle="--",
            marker="o",
            markersize=11,
            markerfacecolor="none",
            markeredgewidth=1.5,
            label="Pareto front",
            zorder=4,
        )
    base = evaluation.systems[0]
    axes.axhline(base.metrics[measure], color="grey", linestyle=":", label=FIRST_STAGE)
    label = {"p50_ms": "p50 ms", "p95_ms": "p95 ms", "cpu_ms_per_query": "CPU ms"}.get(
        latency, latency
    )
    axes.set_xlabel(f"{label} per query (reranking top {evaluation.depth})")
    axes.set_ylabel(measure)
    axes.set_title(f"{measure} against latency, {evaluation.queries} queries")
    axes.legend(loc="best", fontsize=8)
    figure.savefig(str(path), dpi=110)
