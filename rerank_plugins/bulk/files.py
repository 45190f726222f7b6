"""``score_file``: a whole Parquet/JSONL file scored into resumable shards on one machine."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.bulk.jsonl import DEFAULT_MAX_LINE_BYTES
from rerank_plugins.bulk.manifest import MANIFEST, Manifest, input_identity, public_options
from rerank_plugins.bulk.rows import check_columns
from rerank_plugins.bulk.shards import (
    ERRORS_DIR,
    atomic_write_text,
    count_rows,
    errors_path,
    jsonl_shards,
    parquet_shards,
    shard_name,
    write_jsonl_shard,
    write_parquet_shard,
)
from rerank_plugins.errors import InvalidInputError, ScoringError
from rerank_plugins.identity import redact_url, scorer_identity
from rerank_plugins.loading import load_model, load_scorer
from rerank_plugins.scoring import Scorer

__all__ = ["BulkInterrupted", "BulkSummary", "input_format", "score_file"]

logger = logging.getLogger(__name__)

_SUCCESS = "_SUCCESS"
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class BulkInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during :func:`score_file`: ``shards_written`` of ``shards_total``
    shards are complete in ``output``; ``resume=True`` continues from there. A
    ``KeyboardInterrupt``, so that code catching that still sees one."""

    def __init__(self, output: str, shards_written: int, shards_total: int) -> None:
        super().__init__(f"{shards_written} of {shards_total} shards written to {output}")
        self.output = output
        self.shards_written = shards_written
        self.shards_total = shards_total


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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> BulkSummary:
    """Score every row of a Parquet or JSONL file into shards under the ``output`` directory.

    ``model`` is a spec for :func:`~rerank_plugins.loading.load_model` (with ``model_options``) or
    a scorer. ``resume=True`` continues a run into the same ``output``: the same input
    content, shard size, columns and model (its fingerprint and the options that change
    scores, see ``rerank_plugins.bulk.manifest``), else
    :class:`~rerank_plugins.errors.ResumeConflictError` naming what changed; shards whose
    checksum no longer matches are recomputed (logged, and listed in the summary's
    ``extra["shards_recomputed"]``). Without it ``output`` must not exist or be empty. A
    JSONL line over ``max_line_bytes`` is an error row, never read whole. ``progress``
    shows a tqdm bar (default: when stderr is a tty).
    """
    if shard_rows <= 0:
        raise InvalidInputError(f"shard_rows must be positive, got {shard_rows}")
    started = time.perf_counter()
    source = Path(input_path)
    fmt = input_format(source)
    out = Path(output)
    if fmt == "parquet":
        check_columns(_parquet_columns(source), query_column, document_column)
    existing = _check_output(out, resume=resume)
    identity: dict[str, Any] = {
        **input_identity(source),
        "format": fmt,
        "shard_rows": shard_rows,
        "query_column": query_column,
        "document_column": document_column,
        "keep_text": keep_text,
        "recorded": {
            "input": str(source.resolve()),
            "model": redact_url(str(model))
            if isinstance(model, (str, Path))
            else f"<{type(model).__name__}>",
            "model_options": public_options(model_options),
        },
    }
    if existing:  # a changed input or shard size is refused before the model loads
        Manifest(out, identity).check(only_known=True)
    scorer = (
        model
        if isinstance(model, Scorer)
        else load_model(model, model_options or {}, load=load_scorer)
    )
    manifest = Manifest(out, {**identity, "model": scorer_identity(scorer)})
    if existing:
        manifest.resume()
    else:
        manifest.create()
    total = count_rows(source, fmt, max_line_bytes)
    suffix = ".parquet" if fmt == "parquet" else ".jsonl"
    n_shards = -(-total // shard_rows)
    kept, recomputed = _check_shards(manifest, n_shards, suffix)
    if len(kept) == n_shards and (out / _SUCCESS).exists():
        logger.info("%s is already complete", out)
        manifest.finish_run(time.perf_counter() - started)
        summary = _summary(out, manifest, len(kept), 0, total, recomputed)
        atomic_write_text(out / _SUCCESS, summary.to_json() + "\n")
        return summary
    (out / _SUCCESS).unlink(missing_ok=True)
    start = _first_missing(kept)
    options = {"max_line_bytes": max_line_bytes} if fmt == "jsonl" else {}
    reader = parquet_shards if fmt == "parquet" else jsonl_shards
    write_shard = write_parquet_shard if fmt == "parquet" else write_jsonl_shard
    bar = _progress_bar(total, sum(_rows(manifest, i) for i in kept), progress)
    this_run = {"rows": 0, "errors": 0, "tokens": 0}
    try:
        for index, shard in reader(source, shard_rows=shard_rows, start_shard=start, **options):
            if index in kept:
                continue
            rows, errors, tokens, tmp = write_shard(
                out, index, shard, scorer, query_column, document_column, keep_text, shard_rows
            )
            counts = {"rows": rows, "errors": errors, "tokens": tokens}
            path = out / shard_name(index, suffix)
            # Checksum first, then the rename: the commit. A shard is visible only whole and
            # only once recorded; a kill between the two leaves a record with no file.
            manifest.record(index, tmp, path.name, errors_path(out, index), counts)
            os.replace(tmp, path)
            for key, value in counts.items():
                this_run[key] += value
            bar.update(rows)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(tokens_s=f"{this_run['tokens'] / elapsed:,.0f}", errors=errors)
            logger.info("shard %d: %d rows, %d errors", index, rows, errors)
    except KeyboardInterrupt as exc:
        # Complete shards are on disk (each renamed into place whole); the one in progress
        # is not. Say how far the run got, for the --resume that continues it.
        written = len(manifest.data["shards"])
        raise BulkInterrupted(str(out), written, max(1, n_shards)) from exc
    finally:
        bar.close()
        manifest.finish_run(time.perf_counter() - started)
    summary = _summary(out, manifest, len(kept), this_run["rows"], total, recomputed)
    if summary.rows != total or summary.shards != n_shards:
        raise ScoringError(
            f"{out} holds {summary.rows} rows in {summary.shards} shards for an input of "
            f"{total} rows ({n_shards} shards); _SUCCESS not written"
        )
    atomic_write_text(out / _SUCCESS, summary.to_json() + "\n")
    return summary


def _parquet_columns(source: Path) -> list[str]:
    pq = require("pyarrow.parquet")
    pa = require("pyarrow")
    try:
        return list(pq.read_schema(source).names)
    except FileNotFoundError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc}") from exc
    except pa.ArrowException as exc:  # not Parquet, truncated, corrupt footer
        raise InvalidInputError(f"{source} is not a readable Parquet file: {exc}") from exc


def _check_output(out: Path, *, resume: bool) -> bool:
    """Whether ``out`` holds an earlier run; refuse a non-empty ``out`` without ``resume``."""
    if out.is_symlink() and not out.exists():
        raise InvalidInputError(f"{out} is a link to {os.readlink(out)}, which does not exist")
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} exists and is not a directory")
    if not (out.exists() and any(out.iterdir())):
        out.mkdir(parents=True, exist_ok=True)  # an unwritable place fails before the model
        return False
    if not resume:
        raise InvalidInputError(
            f"{out} is not empty: pass --resume to continue that run, or choose a new output"
        )
    if not (out / MANIFEST).exists():
        raise InvalidInputError(f"{out} has no {MANIFEST}: it is not a bulk scoring output")
    for stale in [*out.glob(".*.tmp"), *(out / ERRORS_DIR).glob(".*.tmp")]:
        stale.unlink()  # the shard a killed run was writing
    return True


def _check_shards(manifest: Manifest, n_shards: int, suffix: str) -> tuple[set[int], list[int]]:
    """The shards kept (their files match the manifest) and those to recompute (said)."""
    out = manifest.out
    kept: set[int] = set()
    recomputed: list[int] = []
    for index in range(n_shards):
        path = out / shard_name(index, suffix)
        if not path.exists():
            manifest.forget(index)  # never written, or killed before its rename
            continue
        why = manifest.verify(index, errors_path(out, index))
        if why is None:
            kept.add(index)
            continue
        logger.warning("shard %s is recomputed: %s", path.name, why)
        recomputed.append(index)
        manifest.forget(index)
    return kept, recomputed


def _rows(manifest: Manifest, index: int) -> int:
    record = manifest.shard(index)
    return int(record.get("rows", 0)) if record else 0


def _summary(
    out: Path,
    manifest: Manifest,
    kept: int,
    rows_this_run: int,
    total: int,
    recomputed: list[int],
) -> BulkSummary:
    """Totals over the whole output (every run's shards), from the checksummed records."""
    totals = manifest.totals()
    runs = manifest.runs
    return BulkSummary(
        output=str(out),
        rows=totals["rows"],
        errors=totals["errors"],
        tokens=totals["tokens"],
        shards=len(manifest.data["shards"]),
        shards_resumed=kept,
        seconds=round(sum(float(r.get("seconds", 0.0)) for r in runs), 3),
        extra={
            "rows_this_run": rows_this_run,
            "total_rows": total,
            "shards_recomputed": recomputed,
            "runs": [{"seconds": r.get("seconds"), "shards": r.get("shards")} for r in runs],
        },
    )


def _first_missing(done: set[int]) -> int:
    # The first shard to write; shards after it that are kept are skipped, not rewritten.
    k = 0
    while k in done:
        k += 1
    return k


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
