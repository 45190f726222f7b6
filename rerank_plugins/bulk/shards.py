"""The shards of a bulk output: read the input a shard at a time (a JSONL line at most
``max_line_bytes`` long, a bad line an error row), score it, write it to a hidden file
that the caller records and renames into place."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.bulk.jsonl import lines as jsonl_lines
from rerank_plugins.bulk.jsonl import parse_object
from rerank_plugins.bulk.rows import (
    OUTPUT_COLUMNS,
    RowResult,
    row_fields,
    score_rows,
    tokens_of,
    with_results,
)
from rerank_plugins.scoring import Scorer

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "ERRORS_DIR",
    "atomic_write_text",
    "count_rows",
    "errors_path",
    "jsonl_shards",
    "parquet_shards",
    "shard_name",
    "write_jsonl_shard",
    "write_parquet_shard",
]

ERRORS_DIR = "_errors"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def shard_name(index: int, suffix: str) -> str:
    return f"part-{index:06d}{suffix}"


def count_rows(source: Path, fmt: str, max_line_bytes: int) -> int:
    if fmt == "parquet":
        pq = require("pyarrow.parquet")
        return int(pq.ParquetFile(source).metadata.num_rows)
    return sum(1 for _ in jsonl_lines(source, max_line_bytes=max_line_bytes))


def parquet_shards(source: Path, *, shard_rows: int, start_shard: int) -> Iterator[Any]:
    """``(index, table)`` for shards of exactly ``shard_rows`` rows (the last may be shorter),
    starting at shard ``start_shard``; row groups before it are not read."""
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    pf = pq.ParquetFile(source)
    skip = start_shard * shard_rows
    first_group, before = 0, 0
    meta = pf.metadata
    while (
        first_group < meta.num_row_groups and before + meta.row_group(first_group).num_rows <= skip
    ):
        before += meta.row_group(first_group).num_rows
        first_group += 1
    skip -= before
    pending: list[Any] = []
    pending_rows = 0
    index = start_shard
    groups = list(range(first_group, meta.num_row_groups))
    batches = pf.iter_batches(batch_size=shard_rows, row_groups=groups) if groups else iter(())
    for batch in batches:
        if skip:
            cut = min(skip, batch.num_rows)
            batch = batch.slice(cut)
            skip -= cut
        while batch.num_rows:
            take = min(shard_rows - pending_rows, batch.num_rows)
            pending.append(batch.slice(0, take))
            pending_rows += take
            batch = batch.slice(take)
            if pending_rows == shard_rows:
                yield index, pa.Table.from_batches(pending, schema=pf.schema_arrow)
                index += 1
                pending, pending_rows = [], 0
    if pending_rows:
        yield index, pa.Table.from_batches(pending, schema=pf.schema_arrow)


@dataclass(frozen=True, slots=True)
class _Line:
    number: int  # 1-based line in the file
    row: dict[str, Any] | None
    error: str | None = None


def jsonl_shards(
    source: Path, *, shard_rows: int, start_shard: int, max_line_bytes: int
) -> Iterator[Any]:
    """``(index, [_Line])`` shards of non-blank lines, starting at shard ``start_shard``;
    a line over ``max_line_bytes`` or that is not a usable JSON object is an error row."""
    skip = start_shard * shard_rows
    index = start_shard
    shard: list[_Line] = []
    for number, raw in jsonl_lines(source, max_line_bytes=max_line_bytes):
        if skip:
            skip -= 1
            continue
        if raw is None:
            reason = f"line {number} is longer than max_line_bytes={max_line_bytes}; not read"
            shard.append(_Line(number, None, reason))
        else:
            row, error = parse_object(raw, number)
            shard.append(_Line(number, row, error))
        if len(shard) == shard_rows:
            yield index, shard
            index += 1
            shard = []
    if shard:
        yield index, shard


def _error_record(row: int, values: dict[str, Any], document_column: str, error: str) -> str:
    # The document itself is left out (it may be megabytes); "row" points back to it.
    record = {k: v for k, v in values.items() if k != document_column}
    record.update(row=row, error=error)
    return json.dumps(record, ensure_ascii=False, default=str)


def errors_path(out: Path, index: int) -> Path:
    return out / ERRORS_DIR / shard_name(index, ".jsonl")


def _write_errors(out: Path, index: int, records: list[str]) -> None:
    path = errors_path(out, index)
    if not records:
        path.unlink(missing_ok=True)  # left by an earlier, killed attempt at this shard
        return
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, "".join(line + "\n" for line in records))


def write_parquet_shard(
    out: Path,
    index: int,
    table: pa.Table,
    scorer: Scorer,
    query_column: str,
    document_column: str,
    keep_text: bool,
    shard_rows: int,
) -> tuple[int, int, int, Path]:
    pa = require("pyarrow")
    pq = require("pyarrow.parquet")
    results = score_rows(
        scorer,
        table.column(query_column).to_pylist(),
        table.column(document_column).to_pylist(),
    )
    first = index * shard_rows
    failed = [i for i, r in enumerate(results) if r.error is not None]
    if failed:
        bad = table.take(failed).drop_columns([document_column]).to_pylist()
        _write_errors(
            out,
            index,
            [
                _error_record(first + i, values, document_column, str(results[i].error))
                for i, values in zip(failed, bad, strict=True)
            ],
        )
    else:
        _write_errors(out, index, [])
    scored = with_results(table, results, query_column, document_column, keep_text, pa)
    path = out / shard_name(index, ".parquet")
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(scored, tmp)
    # Not renamed here: the caller records the checksum, then renames (the commit).
    return table.num_rows, len(failed), tokens_of(results), tmp


def write_jsonl_shard(
    out: Path,
    index: int,
    lines: list[_Line],
    scorer: Scorer,
    query_column: str,
    document_column: str,
    keep_text: bool,
    shard_rows: int,
) -> tuple[int, int, int, Path]:
    parsed = [i for i, line in enumerate(lines) if line.row is not None]
    results: list[RowResult] = [RowResult(error=line.error) for line in lines]
    usable: list[int] = []
    for i in parsed:
        row = lines[i].row
        assert row is not None
        missing = [c for c in (query_column, document_column) if c not in row]
        taken = [c for c in OUTPUT_COLUMNS if c in row]
        if missing:
            results[i] = RowResult(error=f"line {lines[i].number} has no field {missing}")
        elif taken:
            results[i] = RowResult(error=f"line {lines[i].number} already has field(s) {taken}")
        else:
            usable.append(i)
    rows = [lines[i].row or {} for i in usable]
    for i, result in zip(
        usable,
        score_rows(scorer, [r[query_column] for r in rows], [r[document_column] for r in rows]),
        strict=True,
    ):
        results[i] = result
    first = index * shard_rows
    text: list[str] = []
    errors: list[str] = []
    for i, (line, result) in enumerate(zip(lines, results, strict=True)):
        values = dict(line.row or {})
        if result.error is not None:
            errors.append(_error_record(first + i, values, document_column, result.error))
        if not keep_text:
            values.pop(query_column, None)
            values.pop(document_column, None)
        values.update(row_fields(result))
        text.append(json.dumps(values, ensure_ascii=False) + "\n")
    _write_errors(out, index, errors)
    path = out / shard_name(index, ".jsonl")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(text), encoding="utf-8")
    return len(lines), len(errors), tokens_of(results), tmp
