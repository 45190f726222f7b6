"""The shards of a bulk output: read the input a shard at a time, score it, write it
atomically (a hidden file renamed into place), and count what was written."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
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
    "count_output",
    "count_rows",
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


def count_rows(source: Path, fmt: str) -> int:
    if fmt == "parquet":
        pq = require("pyarrow.parquet")
        return int(pq.ParquetFile(source).metadata.num_rows)
    with source.open("rb") as f:
        return sum(1 for line in f if line.strip())


def count_output(out: Path, fmt: str) -> tuple[int, int]:
    """Rows and error rows written, from the shards on disk (the whole run, resumed or not)."""
    errors = 0
    for path in (out / ERRORS_DIR).glob("part-*.jsonl"):
        with path.open("rb") as f:
            errors += sum(1 for _ in f)
    if fmt == "parquet":
        pq = require("pyarrow.parquet")
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))
    else:
        rows = 0
        for path in out.glob("part-*.jsonl"):
            with path.open("rb") as f:
                rows += sum(1 for _ in f)
    return int(rows), errors


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


def jsonl_shards(source: Path, *, shard_rows: int, start_shard: int) -> Iterator[Any]:
    """``(index, [_Line])`` shards of non-blank lines, starting at shard ``start_shard``."""
    skip = start_shard * shard_rows
    index = start_shard
    shard: list[_Line] = []
    with source.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if skip:
                skip -= 1
                continue
            try:
                value = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                shard.append(_Line(number, None, f"line {number} is not valid JSON: {exc}"))
            else:
                if isinstance(value, dict):
                    shard.append(_Line(number, value))
                else:
                    kind = type(value).__name__
                    shard.append(
                        _Line(number, None, f"line {number} is a JSON {kind}, not an object")
                    )
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


def _write_errors(out: Path, index: int, lines: list[str]) -> None:
    path = out / ERRORS_DIR / shard_name(index, ".jsonl")
    if not lines:
        path.unlink(missing_ok=True)  # left by an earlier, killed attempt at this shard
        return
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_parquet_shard(
    out: Path,
    index: int,
    table: pa.Table,
    scorer: Scorer,
    query_column: str,
    document_column: str,
    keep_text: bool,
    shard_rows: int,
) -> tuple[int, int, int]:
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
    # The rename is the commit: before it the shard does not exist, after it it is whole.
    os.replace(tmp, path)
    return table.num_rows, len(failed), tokens_of(results)


def write_jsonl_shard(
    out: Path,
    index: int,
    lines: list[_Line],
    scorer: Scorer,
    query_column: str,
    document_column: str,
    keep_text: bool,
    shard_rows: int,
) -> tuple[int, int, int]:
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
    atomic_write_text(out / shard_name(index, ".jsonl"), "".join(text))
    return len(lines), len(errors), tokens_of(results)
