"""``rerank(query, documents, top_n=...)``: score and rank in one call.

The one-liner of sentence-transformers' ``CrossEncoder.rank`` and rerankers' ``.rank()``,
over any scorer; :func:`rerank_plugins.rank` does the ranking underneath.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import scorer_from
from rerank_plugins.ranking import Ranked, rank
from rerank_plugins.scoring import Scorer, score_groups

__all__ = ["rerank"]


def rerank(
    query: str,
    documents: Sequence[str | Mapping[str, Any]],
    *,
    top_n: int | None = None,
    score_threshold: float | None = None,
    scorer: Scorer | None = None,
    model: str | Path | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    text_key: str = "text",
) -> list[Ranked]:
    """Rank ``documents`` by relevance to ``query``, best first.

    ``documents`` are strings or mappings holding the text under ``text_key`` (``"text"``).
    Each :class:`Ranked` has ``index`` (the position in ``documents``) and ``score``.
    Give a ``scorer``, or a ``model`` (hub id, directory or endpoint URL) with
    ``model_kwargs``; with neither, the default model is loaded. For many calls, build
    the scorer once (``load_scorer``) and pass it: loading is the slow part.

    Examples:
        >>> from rerank_plugins.testing import FunctionScorer
        >>> scorer = FunctionScorer(lambda q, d: float(len(set(q.split()) & set(d.split()))))
        >>> docs = ["a cat", {"text": "the big red cat"}, "a dog"]
        >>> [(r.index, r.score.value) for r in rerank("big cat", docs, scorer=scorer, top_n=2)]
        [(1, 2.0), (0, 1.0)]
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidInputError(
            f"documents must be a sequence of str or mappings, got {type(documents).__name__}"
        )
    texts: list[str] = []
    bad: list[int] = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif isinstance(doc, Mapping) and isinstance(doc.get(text_key), str):
            texts.append(doc[text_key])
        else:
            bad.append(i)
    if bad:
        raise InvalidInputError(
            f"documents at indices {bad} are neither str nor a mapping with a str "
            f"{text_key!r} field",
            indices=bad,
        )
    used = scorer_from(scorer, model, dict(model_kwargs or {}))
    (scores,) = score_groups(used, [(query, texts)]) if texts else ([],)
    return rank(scores, top_n=top_n, score_threshold=score_threshold)
