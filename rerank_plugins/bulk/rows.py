"""Rows to scores: :func:`score_rows` and :func:`score_table`, the scoring every bulk path
(``score_file``, the Ray Data UDF) shares; a bad row gets its reason, never a lost row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError, InvalidScoreError, RerankError
from rerank_plugins.scoring import Score, Scorer, check_scores

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


def _call(scorer: Scorer, query: object, documents: list[object]) -> list[Score]:
    # The scorer validates its own input (raising InvalidInputError with indices).
    return check_scores(scorer.score(query, documents), len(documents))  # type: ignore[arg-type]


def _reason(exc: RerankError) -> str:
    return f"{type(exc).__name__}: {exc}"


def score_rows(
    scorer: Scorer, queries: Sequence[object], documents: Sequence[object]
) -> list[RowResult]:
    """Score rows given as parallel ``queries`` and ``documents``; one result per row, in order.

    A row whose document is a list is scored as one ``scorer.score(query, documents)`` call;
    pair rows that share a query are scored together in one call (the engine then packs
    them into token-budget batches). When a call fails for bad input, its rows are scored
    one by one so that each bad row gets its own reason and the good ones their scores.
    """
    if len(queries) != len(documents):
        raise InvalidInputError(f"{len(queries)} queries for {len(documents)} document rows")
    results: list[RowResult | None] = [None] * len(queries)
    groups: dict[str, list[int]] = {}
    for i, (query, doc) in enumerate(zip(queries, documents, strict=True)):
        if isinstance(doc, (list, tuple)):
            try:
                results[i] = RowResult(scores=_call(scorer, query, list(doc)))
            except ROW_ERRORS as exc:
                results[i] = RowResult(error=_reason(exc))
        elif isinstance(query, str):
            groups.setdefault(query, []).append(i)
        else:
            results[i] = _score_one(scorer, query, doc)
    for query, rows in groups.items():
        try:
            scores = _call(scorer, query, [documents[i] for i in rows])
        except ROW_ERRORS:
            for i in rows:
                results[i] = _score_one(scorer, query, documents[i])
            continue
        for i, score in zip(rows, scores, strict=True):
            results[i] = RowResult(scores=score)
    return [r if r is not None else RowResult(error="not scored") for r in results]


def _score_one(scorer: Scorer, query: object, document: object) -> RowResult:
    try:
        return RowResult(scores=_call(scorer, query, [document])[0])
    except ROW_ERRORS as exc:
        return RowResult(error=_reason(exc))


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
