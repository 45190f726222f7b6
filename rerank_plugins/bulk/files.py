"""``score_file``: a whole Parquet/JSONL file scored into resumable shards on one machine."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.bulk.rows import check_columns
from rerank_plugins.bulk.shards import (
    ERRORS_DIR,
    atomic_write_text,
    count_output,
    count_rows,
    jsonl_shards,
    parquet_shards,
    write_jsonl_shard,
    write_parquet_shard,
)
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import load_model, load_scorer
from rerank_plugins.scoring import Scorer

__all__ = ["BulkInterrupted", "BulkSummary", "input_format", "score_file"]

logger = logging.getLogger(__name__)

_MANIFEST = "_manifest.json"
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
) -> BulkSummary:
    """Score every row of a Parquet or JSONL file into shards under the ``output`` directory.

    ``model`` is a spec for :func:`~rerank_plugins.loading.load_model` (with ``model_options``) or
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
        pa = require("pyarrow")
        try:
            names = pq.read_schema(source).names
        except pa.ArrowException as exc:  # not Parquet, truncated, corrupt footer
            raise InvalidInputError(f"{source} is not a readable Parquet file: {exc}") from exc
        check_columns(names, query_column, document_column)
    done = _prepare_output(out, manifest, resume=resume)
    summary = BulkSummary(output=str(out))
    if (out / _SUCCESS).exists():
        logger.info("%s is already complete", out)
        previous = json.loads((out / _SUCCESS).read_text(encoding="utf-8"))
        return BulkSummary(**{**previous, "shards_resumed": previous.get("shards", 0)})
    scorer = (
        model
        if isinstance(model, Scorer)
        else load_model(model, model_options or {}, load=load_scorer)
    )
    start = _first_missing(done)
    summary.shards_resumed = start
    reader = parquet_shards if fmt == "parquet" else jsonl_shards
    total = count_rows(source, fmt)
    bar = _progress_bar(total, start * shard_rows, progress)
    try:
        for index, shard in reader(source, shard_rows=shard_rows, start_shard=start):
            write_shard = write_parquet_shard if fmt == "parquet" else write_jsonl_shard
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
    except KeyboardInterrupt as exc:
        # Complete shards are on disk (each renamed into place whole); the one in progress
        # is not. Say how far the run got, for the --resume that continues it.
        total_shards = max(1, math.ceil(total / shard_rows))
        raise BulkInterrupted(str(out), start + summary.shards, total_shards) from exc
    finally:
        bar.close()
    # Totals over the whole output, not just this run's part: read back from the shards.
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.extra = {"rows_this_run": summary.rows, "total_rows": total}
    summary.rows, summary.errors = count_output(out, fmt)
    summary.shards += start
    atomic_write_text(out / _SUCCESS, summary.to_json() + "\n")
    return summary


def _prepare_output(out: Path, manifest: dict[str, Any], *, resume: bool) -> set[int]:
    """Check or create ``out``; return the indices of the shards already complete."""
    path = out / _MANIFEST
    if out.is_symlink() and not out.exists():
        raise InvalidInputError(f"{out} is a link to {os.readlink(out)}, which does not exist")
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
        for stale in (out / ERRORS_DIR).glob(".*.tmp"):
            stale.unlink()
        suffix = ".parquet" if manifest["format"] == "parquet" else ".jsonl"
        return {int(p.stem.split("-")[1]) for p in out.glob(f"part-*{suffix}")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return set()


def _first_missing(done: set[int]) -> int:
    # Shards are written in order, so the complete ones are a prefix; any shard after the
    # first missing one is rewritten (replaced atomically, so never duplicated).
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
