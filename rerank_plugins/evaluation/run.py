"""``evaluate``: rerank the top of a first-stage run with each system, measure quality and cost.

A reranked run is the first-stage run re-ordered **within its top ``depth``** only: the
documents below keep their first-stage order, after the reranked ones. Ties between
reranker scores keep the first-stage order; a cascade's documents that a later stage scored
come before the others, as :func:`~rerank_plugins.ranking.rank` orders them.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.evaluation.data import Collection, Run
from rerank_plugins.evaluation.metrics import MEASURES, compare, mean, per_query
from rerank_plugins.scoring import Scorer, score_groups

__all__ = [
    "FIRST_STAGE",
    "Evaluation",
    "SystemResult",
    "SystemSpec",
    "evaluate",
    "parse_model_spec",
    "rerank_within_depth",
]

logger = logging.getLogger(__name__)

FIRST_STAGE = "first-stage"
"""The name of the first-stage system in every report."""


@dataclass(frozen=True)
class SystemSpec:
    """A system to evaluate: ``load_scorer(spec, **options)``, shown as ``name``."""

    name: str
    spec: str
    options: dict[str, Any] = field(default_factory=dict)


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_spec(text: str) -> SystemSpec:
    """``"SPEC key=value ..."`` (shell quoting) → a :class:`SystemSpec`.

    The first word is anything ``load_scorer`` takes; each ``key=value`` is a
    ``load_scorer`` option (numbers, ``true``/``false`` and ``none`` are converted), except
    ``name=``, the system's name in the reports (default: the whole text).

    >>> parse_model_spec("ckpt dtype=int8 layer=8 name=int8-l8")
    SystemSpec(name='int8-l8', spec='ckpt', options={'dtype': 'int8', 'layer': 8})
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InvalidInputError(f"--model {text!r}: {exc}") from exc
    if not words:
        raise InvalidInputError("--model needs a model spec")
    options: dict[str, Any] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidInputError(f"--model {text!r}: {word!r} is not key=value")
        if key in options:
            raise InvalidInputError(f"--model {text!r}: {key} given twice")
        options[key] = _value(value)
    name = options.pop("name", None)
    return SystemSpec(
        name=str(name) if name is not None else " ".join(words), spec=words[0], options=options
    )


@dataclass
class SystemResult:
    """One system's figures: ``metrics`` (means), ``per_query``, ``cost``, and
    ``significance`` against the first stage (``None`` for the first stage itself)."""

    name: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    cost: dict[str, float | int | None]
    significance: dict[str, dict[str, float | None]] | None = None
    run: Run = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": self.metrics,
            "per_query": self.per_query,
            "cost": self.cost,
            "significance": self.significance,
        }


@dataclass
class Evaluation:
    """Every system's :class:`SystemResult`, the first stage first."""

    systems: list[SystemResult]
    depth: int
    queries: int

    def to_json(self) -> dict[str, Any]:
        return {"systems": [s.to_json() for s in self.systems]}


def rerank_within_depth(
    run_docs: Sequence[tuple[str, float]],
    scores: Sequence[float],
    depth: int,
    *,
    stages: Sequence[int | None] | None = None,
) -> list[tuple[str, float]]:
    """The top ``depth`` of ``run_docs`` re-ordered by ``scores`` (one per reranked
    document; ties keep their order), then the rest as they were. With a cascade's
    ``stages`` (``Score.stage``, ``None`` counting as 0), a later stage comes first
    whatever the values, as :func:`~rerank_plugins.ranking.rank` orders them.

    >>> rerank_within_depth([("a", 3.0), ("b", 2.0), ("c", 1.0)], [0.1, 0.9], 2)
    [('b', 0.9), ('a', 0.1), ('c', 1.0)]
    >>> rerank_within_depth([("a", 3.0), ("b", 2.0), ("c", 1.0)], [5.0, 0.1], 2, stages=[0, 1])
    [('b', 0.1), ('a', 5.0), ('c', 1.0)]
    """
    head = list(run_docs[:depth])
    if len(scores) != len(head):
        raise InvalidInputError(f"{len(scores)} scores for {len(head)} reranked documents")
    levels = [0] * len(head) if stages is None else [s or 0 for s in stages]
    if len(levels) != len(head):
        raise InvalidInputError(f"{len(levels)} stages for {len(head)} reranked documents")
    order = sorted(range(len(head)), key=lambda i: (-levels[i], -scores[i]))
    return [(head[i][0], float(scores[i])) for i in order] + list(run_docs[depth:])


def _peak_rss_mb() -> float | None:
    if sys.platform == "win32":
        return None
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _cost(
    wall: float, cpu: float, latencies: list[float], documents: int, tokens: int | None
) -> dict[str, float | int | None]:
    numpy = __import__("numpy")
    ms = numpy.array(latencies) * 1000.0 if latencies else None

    def rate(n: float | None) -> float | None:
        return None if n is None or wall <= 0 else round(n / wall, 3)

    return {
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "queries": len(latencies),
        "documents": documents,
        "tokens": tokens,
        "queries_per_s": rate(len(latencies)),
        "documents_per_s": rate(documents),
        "tokens_per_s": rate(tokens),
        "p50_ms": None if ms is None else round(float(numpy.percentile(ms, 50)), 3),
        "p95_ms": None if ms is None else round(float(numpy.percentile(ms, 95)), 3),
        # CPU time (all threads) per query: steadier than wall time on a shared machine.
        "cpu_ms_per_query": round(cpu * 1000.0 / len(latencies), 3) if latencies else None,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _rerank(
    scorer: Scorer,
    collection: Collection,
    run: Run,
    *,
    depth: int,
    progress: Callable[[Any], Any],
) -> tuple[Run, dict[str, float | int | None]]:
    reranked: Run = {}
    latencies: list[float] = []
    documents = 0
    tokens: int | None = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for qid in progress(list(run)):
        docs = run[qid]
        if not docs:
            reranked[qid] = []
            continue
        texts = [collection.corpus[d] for d, _ in docs[:depth]]
        start = time.perf_counter()
        scores = score_groups(scorer, [(collection.queries[qid], texts)])[0]
        latencies.append(time.perf_counter() - start)
        documents += len(texts)
        if tokens is not None and all(s.tokens is not None for s in scores):
            tokens += sum(s.tokens or 0 for s in scores)
        else:
            tokens = None  # the backend does not say: no tokens/s rather than a wrong one
        values, stages = [s.value for s in scores], [s.stage for s in scores]
        reranked[qid] = rerank_within_depth(docs, values, depth, stages=stages)
    cost = _cost(
        time.perf_counter() - wall0, time.process_time() - cpu0, latencies, documents, tokens
    )
    return reranked, cost


def _result(name: str, collection: Collection, run: Run, cost: dict[str, Any]) -> SystemResult:
    values = per_query(collection.qrels, run)
    return SystemResult(
        name=name,
        metrics={m: mean(values[m]) for m in MEASURES},
        per_query=values,
        cost=cost,
        run=run,
    )


def evaluate(
    collection: Collection,
    first_stage: Run,
    systems: Sequence[tuple[str, Scorer]],
    *,
    depth: int = 100,
    first_stage_cost: dict[str, Any] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate the first stage and each ``(name, scorer)`` reranking its top ``depth``.

    ``first_stage`` must already be checked against ``collection``
    (:func:`~rerank_plugins.evaluation.data.check_run`): one entry per judged query.
    """
    if depth <= 0:
        raise InvalidInputError(f"depth must be positive, got {depth}")
    names = [FIRST_STAGE, *(name for name, _ in systems)]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"system names must be distinct (and not {FIRST_STAGE!r}): {names}")
    base = _result(FIRST_STAGE, collection, first_stage, dict(first_stage_cost or {}))
    results = [base]
    for name, scorer in systems:
        logger.info("evaluating %s on %d queries (depth %d)", name, len(first_stage), depth)
        bar = _progress(progress, name)
        run, cost = _rerank(scorer, collection, first_stage, depth=depth, progress=bar)
        result = _result(name, collection, run, cost)
        result.significance = {m: compare(base.per_query[m], result.per_query[m]) for m in MEASURES}
        results.append(result)
    return Evaluation(systems=results, depth=depth, queries=len(first_stage))


def _progress(enabled: bool, name: str) -> Callable[[Any], Any]:
    if not enabled:
        return lambda items: items
    from rerank_plugins._imports import require

    tqdm = require("tqdm").tqdm
    return lambda items: tqdm(items, desc=name, unit="query", file=sys.stderr)
