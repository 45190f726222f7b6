"""Rows to scores: :func:`score_rows` and :func:`score_table`, the scoring every bulk path
(``score_file``, the Ray Data UDF) shares; a bad row gets its reason, never a lost row."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError, InvalidScoreError, RerankError
from rerank_plugins.scoring import Score, Scorer, score_groups

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "OUTPUT_COLUMNS",
    "ROW_ERRORS",
    "RowResult",
    "check_columns",
    "row_fields",
    "score_rows",
    "score_table",
    "tokens_of",
    "with_results",
]

OUTPUT_COLUMNS = ("score", "tokens", "truncated", "error")
"""The columns bulk scoring adds to every row."""

ROW_ERRORS: tuple[type[RerankError], ...] = (InvalidInputError, InvalidScoreError)
"""Failures that belong to a row's input: recorded with the row. Others stop the run
(an unreachable endpoint is not a property of the row; the run resumes later)."""


@dataclass(frozen=True, slots=True)
class RowResult:
    """The outcome of one row: its scores (one, or one per document of a list row), or the
    reason it could not be scored."""

    scores: Score | list[Score] | None = None
    error: str | None = None


def _reason(exc: RerankError) -> str:
    return f"{type(exc).__name__}: {exc}"


def score_rows(
    scorer: Scorer, queries: Sequence[object], documents: Sequence[object]
) -> list[RowResult]:
    """Score rows given as parallel ``queries`` and ``documents``; one result per row, in order.

    A row whose document is a list is scored as one query group, a pair row as a group of
    one; all go through :func:`~rerank_plugins.scoring.score_groups` together, so rows that
    share a query are scored in one call (the engine then packs them into token-budget
    batches). When a call fails for bad input, the rows are split in halves and scored
    again, down to single rows, so that each bad row gets its own reason and the good
    ones their scores.
    """
    if len(queries) != len(documents):
        raise InvalidInputError(f"{len(queries)} queries for {len(documents)} document rows")
    groups: list[tuple[Any, list[Any]]] = [
        (query, list(doc) if isinstance(doc, (list, tuple)) else [doc])
        for query, doc in zip(queries, documents, strict=True)
    ]
    is_list = [isinstance(doc, (list, tuple)) for doc in documents]
    results = _score_split(scorer, groups, list(range(len(groups))))
    out: list[RowResult] = []
    for listed, result in zip(is_list, results, strict=True):
        if isinstance(result, str):
            out.append(RowResult(error=result))
        else:
            out.append(_finite(RowResult(scores=result if listed else result[0])))
    return out


def _finite(result: RowResult) -> RowResult:
    """The row's error when a score is NaN or infinite (never ``score: NaN, error: null``)."""
    scores = result.scores
    listed = scores if isinstance(scores, list) else [] if scores is None else [scores]
    bad = [i for i, s in enumerate(listed) if not math.isfinite(s.value)]
    if not bad:
        return result
    where = f" for documents {bad}" if isinstance(scores, list) else ""
    exc = InvalidScoreError(f"the model returned a non-finite score{where}", indices=bad)
    return RowResult(error=_reason(exc))


def _score_split(
    scorer: Scorer, groups: list[tuple[Any, list[Any]]], rows: list[int]
) -> list[list[Score] | str]:
    """Scores (or the reason of the failure) of ``rows``, halving the rows after a row error."""
    try:
        return list(score_groups(scorer, [groups[i] for i in rows]))
    except ROW_ERRORS as exc:
        if len(rows) == 1:
            return [_reason(exc)]
    middle = len(rows) // 2
    return _score_split(scorer, groups, rows[:middle]) + _score_split(scorer, groups, rows[middle:])


def row_fields(result: RowResult) -> dict[str, Any]:
    """The output fields of one row: plain values for a pair row, lists for a list row."""
    s = result.scores
    if isinstance(s, list):
        return {
            "score": [x.value for x in s],
            "tokens": [x.tokens for x in s],
            "truncated": [x.truncated for x in s],
            "error": None,
        }
    if s is None:
        return {"score": None, "tokens": None, "truncated": None, "error": result.error}
    return {"score": s.value, "tokens": s.tokens, "truncated": s.truncated, "error": None}


def tokens_of(results: Sequence[RowResult]) -> int:
    total = 0
    for r in results:
        for s in r.scores if isinstance(r.scores, list) else [r.scores]:
            if s is not None and s.tokens is not None:
                total += s.tokens
    return total


def check_columns(names: Sequence[str], query_column: str, document_column: str) -> None:
    missing = [c for c in (query_column, document_column) if c not in names]
    if missing:
        raise InvalidInputError(
            f"input has no column {', '.join(map(repr, missing))}; its columns are {list(names)}"
        )
    taken = [c for c in OUTPUT_COLUMNS if c in names]
    if taken:
        raise InvalidInputError(
            f"input already has column(s) {taken}, which scoring writes; rename them first"
        )


def score_table(
    scorer: Scorer,
    table: pa.Table,
    *,
    query_column: str = "query",
    document_column: str = "text",
    keep_text: bool = True,
) -> pa.Table:
    """``table`` with ``score``, ``tokens``, ``truncated`` and ``error`` appended, rows in order.

    ``document_column`` holds strings (one pair per row) or lists of strings (a query with
    its documents; the added columns are then lists too). Every row comes back; rows that
    could not be scored have null scores and the reason in ``error``. ``keep_text=False``
    drops the query and document columns from the result.
    """
    pa = require("pyarrow")
    check_columns(table.column_names, query_column, document_column)
    results = score_rows(
        scorer,
        table.column(query_column).to_pylist(),
        table.column(document_column).to_pylist(),
    )
    return with_results(table, results, query_column, document_column, keep_text, pa)


def _is_list_column(type_: pa.DataType, pa: Any) -> bool:
    return bool(
        pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_list_view(type_)
    )


def with_results(
    table: pa.Table,
    results: Sequence[RowResult],
    query_column: str,
    document_column: str,
    keep_text: bool,
    pa: Any,
) -> pa.Table:
    fields = [row_fields(r) for r in results]
    types = {"score": pa.float64(), "tokens": pa.int64(), "truncated": pa.bool_()}
    if _is_list_column(table.schema.field(document_column).type, pa):
        types = {name: pa.list_(t) for name, t in types.items()}
    types["error"] = pa.string()
    if not keep_text:
        table = table.drop_columns([query_column, document_column])
    for name, type_ in types.items():
        # Explicit types: a shard whose rows all failed must keep the schema of the others.
        table = table.append_column(name, pa.array([f[name] for f in fields], type=type_))
    return table
