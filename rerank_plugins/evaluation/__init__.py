"""Evaluation of rerankers on your own judgments, and score calibration (``[eval]`` extra).

- :mod:`~rerank_plugins.evaluation.data`: BEIR/TREC readers, every input checked;
- :mod:`~rerank_plugins.evaluation.first_stage`: BM25 (``bm25s``) or the packaged MiniLM;
- :mod:`~rerank_plugins.evaluation.run`: :func:`evaluate` reranks within ``depth``, with cost;
- :mod:`~rerank_plugins.evaluation.metrics`: ir-measures metrics, paired significance;
- :mod:`~rerank_plugins.evaluation.report`: table, JSON, Markdown, quality/latency plot;
- :mod:`~rerank_plugins.evaluation.calibration`: Platt fit, ECE, reliability plot.

Importing this package imports none of the extra's libraries.
"""

from __future__ import annotations

from rerank_plugins.evaluation.data import (
    Collection,
    check_run,
    load_collection,
    read_qrels,
    read_run,
)
from rerank_plugins.evaluation.run import (
    FIRST_STAGE,
    Evaluation,
    SystemResult,
    evaluate,
    parse_model_spec,
    rerank_within_depth,
)

__all__ = [
    "FIRST_STAGE",
    "Collection",
    "Evaluation",
    "SystemResult",
    "check_run",
    "evaluate",
    "load_collection",
    "parse_model_spec",
    "read_qrels",
    "read_run",
    "rerank_within_depth",
]
