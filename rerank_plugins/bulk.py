"""Bulk scoring of Parquet and JSONL files, resumable, in completed shards.

A row is either a pair (``query`` and one document string) or a query with a list of
documents. :func:`score_table` scores an Arrow table of such rows through any
:class:`~rerank_plugins.Scorer` (the Ray Data UDF in :mod:`rerank_plugins.ray` uses it
too); :func:`score_file` runs it over a whole file on one machine::

    OUTPUT/
      _manifest.json             input identity, shard size, columns, model: checked on --resume
      part-000000.parquet        rows [0, shard_rows), input order, input columns kept
      part-000001.parquet        ... (.jsonl shards for a JSONL input)
      _errors/part-000001.jsonl  rows that could not be scored, with the reason
      _SUCCESS                   written last: the run's summary

Every input row is written, in input order, with ``score``, ``tokens``, ``truncated`` and
``error`` (null unless the row could not be scored; for a list row each of the first three
is a list, one entry per document). Rows with bad input (a blank query, a document that is
not a string, a document over the window with ``overflow="error"``) get their reason in
``error`` and in ``_errors/``; any other failure stops the run, which ``resume=True``
continues from the first missing shard. A shard becomes visible only once complete
(written to a hidden file, then renamed), so a killed run loses at most the shard in
progress and never writes a row twice. Memory is bounded by the shard (and, for Parquet,
the input's row group), not by the input.

Needs the ``bulk`` extra (pyarrow, tqdm); importing this module imports neither.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins._model_args import add_model_options, load_model, model_options
from rerank_plugins.errors import InvalidInputError, InvalidScoreError, RerankError
from rerank_plugins.scoring import Score, Scorer, score_groups

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "OUTPUT_COLUMNS",
    "BulkSummary",
    "RowResult",
    "add_score_arguments",
    "score_file",
    "score_rows",
    "score_table",
]

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("score", "tokens", "truncated", "error")
"""The columns bulk scoring adds to every row."""

ROW_ERRORS: tuple[type[RerankError], ...] = (InvalidInputError, InvalidScoreError)
"""Failures that belong to a row's input: recorded with the row. Others stop the run
(an unreachable endpoint is not a property of the row; the run resumes later)."""

_MANIFEST = "_manifest.json"
_SUCCESS = "_SUCCESS"
_ERRORS = "_errors"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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
            out.append(RowResult(scores=result if listed else result[0]))
    return out


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


def _fields(result: RowResult) -> dict[str, Any]:
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


def _tokens(results: Sequence[RowResult]) -> int:
    total = 0
    for r in results:
        for s in r.scores if isinstance(r.scores, list) else [r.scores]:
            if s is not None and s.tokens is not None:
                total += s.tokens
    return total


def _check_columns(names: Sequence[str], query_column: str, document_column: str) -> None:
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
    _check_columns(table.column_names, query_column, document_column)
    results = score_rows(
        scorer,
        table.column(query_column).to_pylist(),
        table.column(document_column).to_pylist(),
    )
    return _with_results(table, results, query_column, document_column, keep_text, pa)


def _is_list_column(type_: pa.DataType, pa: Any) -> bool:
    return bool(
        pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_list_view(type_)
    )


def _with_results(
    table: pa.Table,
    results: Sequence[RowResult],
    query_column: str,
    document_column: str,
    keep_text: bool,
    pa: Any,
) -> pa.Table:
    fields = [_fields(r) for r in results]
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


@dataclass
class BulkSummary:
    """What :func:`score_file` did (also written to ``OUTPUT/_SUCCESS``)."""

    output: str
    rows: int = 0
    errors: int = 0
    tokens: int = 0
    shards: int = 0
    shards_resumed: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def input_format(path: str | Path) -> str:
    """``"parquet"`` or ``"jsonl"`` from the file's suffix."""
    fmt = _FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise InvalidInputError(
            f"{path}: unknown input format; use a .parquet or .jsonl file ({sorted(_FORMATS)})"
        )
    return fmt


def score_file(
    input_path: str | Path,
    output: str | Path,
    *,
    model: str | Path | Scorer,
    query_column: str = "query",
    document_column: str = "text",
    shard_rows: int = 10_000,
    resume: bool = False,
    keep_text: bool = True,
    model_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> BulkSummary:
    """Score every row of a Parquet or JSONL file into shards under the ``output`` directory.

    ``model`` is a spec for :func:`~rerank_plugins.load_scorer` (with ``model_options``) or
    a scorer. ``resume=True`` continues a run into the same ``output`` (same input, shard
    size, columns and model, else :class:`InvalidInputError`); without it ``output`` must
    not exist or be empty. ``progress`` shows a tqdm bar (default: when stderr is a tty).
    """
    if shard_rows <= 0:
        raise InvalidInputError(f"shard_rows must be positive, got {shard_rows}")
    started = time.perf_counter()
    source = Path(input_path)
    fmt = input_format(source)
    try:
        stat = source.stat()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc}") from exc
    out = Path(output)
    manifest = {
        "version": 1,
        "input": str(source.resolve()),
        "input_size": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "format": fmt,
        "shard_rows": shard_rows,
        "query_column": query_column,
        "document_column": document_column,
        "keep_text": keep_text,
        "model": str(model) if isinstance(model, (str, Path)) else f"<{type(model).__name__}>",
        # Never the key: the manifest is a plain file next to the output.
        "model_options": {
            k: repr(v) for k, v in sorted((model_options or {}).items()) if k != "api_key"
        },
    }
    if fmt == "parquet":
        pq = require("pyarrow.parquet")
        _check_columns(pq.read_schema(source).names, query_column, document_column)
    done = _prepare_output(out, manifest, resume=resume)
    summary = BulkSummary(output=str(out))
    if (out / _SUCCESS).exists():
        logger.info("%s is already complete", out)
        previous = json.loads((out / _SUCCESS).read_text(encoding="utf-8"))
        return BulkSummary(**{**previous, "shards_resumed": previous.get("shards", 0)})
    scorer = model if isinstance(model, Scorer) else load_model(model, model_options or {})
    start = _first_missing(done)
    summary.shards_resumed = start
    reader = _parquet_shards if fmt == "parquet" else _jsonl_shards
    total = _count_rows(source, fmt)
    bar = _progress_bar(total, start * shard_rows, progress)
    try:
        for index, shard in reader(source, shard_rows=shard_rows, start_shard=start):
            write_shard = _write_parquet_shard if fmt == "parquet" else _write_jsonl_shard
            rows, errors, tokens = write_shard(
                out,
                index,
                shard,
                scorer,
                query_column,
                document_column,
                keep_text,
                shard_rows,
            )
            summary.rows += rows
            summary.errors += errors
            summary.tokens += tokens
            summary.shards += 1
            bar.update(rows)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(tokens_s=f"{summary.tokens / elapsed:,.0f}", errors=summary.errors)
            logger.info("shard %d: %d rows, %d errors", index, rows, errors)
    finally:
        bar.close()
    # Totals over the whole output, not just this run's part: read back from the shards.
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.extra = {"rows_this_run": summary.rows, "total_rows": total}
    summary.rows, summary.errors = _count_output(out, fmt)
    summary.shards += start
    _atomic_write_text(out / _SUCCESS, summary.to_json() + "\n")
    return summary


def _prepare_output(out: Path, manifest: dict[str, Any], *, resume: bool) -> set[int]:
    """Check or create ``out``; return the indices of the shards already complete."""
    path = out / _MANIFEST
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise InvalidInputError(
                f"{out} is not empty: pass --resume to continue that run, or choose a new output"
            )
        if not path.exists():
            raise InvalidInputError(f"{out} has no {_MANIFEST}: it is not a bulk scoring output")
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
        if changed:
            raise InvalidInputError(
                f"cannot resume {out}: {', '.join(changed)} changed since that run "
                f"(was {[previous.get(k) for k in changed]}, now {[manifest[k] for k in changed]})"
            )
        for stale in out.glob(".*.tmp"):  # the shard a killed run was writing
            stale.unlink()
        for stale in (out / _ERRORS).glob(".*.tmp"):
            stale.unlink()
        suffix = ".parquet" if manifest["format"] == "parquet" else ".jsonl"
        return {int(p.stem.split("-")[1]) for p in out.glob(f"part-*{suffix}")}
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return set()


def _first_missing(done: set[int]) -> int:
    # Shards are written in order, so the complete ones are a prefix; any shard after the
    # first missing one is rewritten (replaced atomically, so never duplicated).
    k = 0
    while k in done:
        k += 1
    return k


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _shard_name(index: int, suffix: str) -> str:
    return f"part-{index:06d}{suffix}"


def _count_rows(source: Path, fmt: str) -> int:
    if fmt == "parquet":
        pq = require("pyarrow.parquet")
        return int(pq.ParquetFile(source).metadata.num_rows)
    with source.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _count_output(out: Path, fmt: str) -> tuple[int, int]:
    """Rows and error rows written, from the shards on disk (the whole run, resumed or not)."""
    errors = 0
    for path in (out / _ERRORS).glob("part-*.jsonl"):
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


def _progress_bar(total: int, initial: int, enabled: bool | None) -> Any:
    tqdm = require("tqdm").tqdm
    # disable=None: shown only when stderr is a terminal.
    return tqdm(
        total=total,
        initial=min(initial, total),
        unit="row",
        unit_scale=True,
        dynamic_ncols=True,
        smoothing=0.1,
        disable=None if enabled is None else not enabled,
    )


def _parquet_shards(source: Path, *, shard_rows: int, start_shard: int) -> Iterator[Any]:
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


def _jsonl_shards(source: Path, *, shard_rows: int, start_shard: int) -> Iterator[Any]:
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
    path = out / _ERRORS / _shard_name(index, ".jsonl")
    if not lines:
        path.unlink(missing_ok=True)  # left by an earlier, killed attempt at this shard
        return
    path.parent.mkdir(exist_ok=True)
    _atomic_write_text(path, "".join(line + "\n" for line in lines))


def _write_parquet_shard(
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
    scored = _with_results(table, results, query_column, document_column, keep_text, pa)
    path = out / _shard_name(index, ".parquet")
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(scored, tmp)
    # The rename is the commit: before it the shard does not exist, after it it is whole.
    os.replace(tmp, path)
    return table.num_rows, len(failed), _tokens(results)


def _write_jsonl_shard(
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
        values.update(_fields(result))
        text.append(json.dumps(values, ensure_ascii=False) + "\n")
    _write_errors(out, index, errors)
    _atomic_write_text(out / _shard_name(index, ".jsonl"), "".join(text))
    return len(lines), len(errors), _tokens(results)


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rerank-plugins score`` (the command line calls :func:`score_file`,
    or :func:`rerank_plugins.ray.score_file_on_ray` with ``--ray``).

    The model options (``--model``, ``--device``, ...) have no default here: the top-level
    parser holds them (so they may come before the subcommand too) with their defaults.
    """
    keep = argparse.SUPPRESS
    parser.add_argument("input", help="a .parquet or .jsonl file, one row per pair or per query")
    parser.add_argument("-o", "--output", required=True, help="output directory (shards)")
    parser.add_argument("--query-column", default="query", help="default: query")
    parser.add_argument(
        "--document-column",
        default="text",
        help="a string (one pair per row) or a list of strings (default: text)",
    )
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument(
        "--shard-rows", type=int, default=10_000, help="rows per output shard (default 10000)"
    )
    parser.add_argument(
        "--drop-text", action="store_true", help="leave the query and document out of the output"
    )
    # The model options of every subcommand (one definition); SUPPRESS defaults, since the
    # top-level parser holds them with their defaults.
    add_model_options(parser.add_argument_group("model options"), defaults=False)
    parser.add_argument(
        "--overflow",
        choices=["truncate", "error", "chunk"],
        default=keep,
        help="documents over the window: truncate and flag (default), record as errors, "
        "or score them in token windows (chunk)",
    )
    parser.add_argument("--api-key", default=keep, help="remote endpoint key")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("Ray (rerank-plugins[ray])")
    ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster (ADDRESS, or RAY_ADDRESS / a local one when omitted; "
        "write --ray=ADDRESS before INPUT)",
    )
    ray.add_argument("--num-gpus", type=float, help="GPUs per actor (default: 1 if any)")
    ray.add_argument("--num-cpus", type=float, help="CPUs per actor (default: Ray's 1)")
    ray.add_argument("--concurrency", type=int, help="actors (default: one per GPU, else 1)")
    ray.add_argument("--batch-size", type=int, default=512, help="rows per batch (default 512)")


def score_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scorer options given on the ``score`` command line (``load_scorer`` options)."""
    options = model_options(args, remote_only={"api_key": "--api-key"})
    options["overflow"] = getattr(args, "overflow", None) or "truncate"
    if getattr(args, "api_key", None) is not None:
        options["api_key"] = args.api_key
    return options
