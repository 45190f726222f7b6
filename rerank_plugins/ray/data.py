"""Bulk scoring on a Ray cluster: :func:`score_dataset` (a Ray Data UDF over
:func:`rerank_plugins.bulk.score_table`) and :func:`score_file_on_ray`
(``rerank-plugins score --ray``)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.bulk import BulkSummary, input_format, score_table
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import load_scorer
from rerank_plugins.scoring import Scorer

if TYPE_CHECKING:
    import pyarrow as pa

ray = require("ray")
require("ray.data")

__all__ = ["cluster_gpus", "score_dataset", "score_file_on_ray"]


class _ScoreBatches:
    """The Ray Data UDF: one scorer per actor, built once in the constructor."""

    def __init__(
        self,
        model: str | Path | Scorer,
        model_options: dict[str, Any],
        query_column: str,
        document_column: str,
        keep_text: bool,
    ) -> None:
        if isinstance(model, Scorer):
            self.scorer = model
        else:
            self.scorer = load_scorer(model, **model_options)
        self.query_column = query_column
        self.document_column = document_column
        self.keep_text = keep_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(
            self.scorer,
            batch,
            query_column=self.query_column,
            document_column=self.document_column,
            keep_text=self.keep_text,
        )


def cluster_gpus() -> float:
    if not ray.is_initialized():
        ray.init()  # what Ray Data would do on first execution; RAY_ADDRESS is honoured
    return float(ray.cluster_resources().get("GPU", 0.0))


def _actor_cpus(num_cpus: float | None, concurrency: int) -> float:
    """CPUs per actor that leave one CPU of the cluster to Ray Data's read and write tasks.

    The actors hold their CPUs for the whole run; tasks that find none left wait forever
    (``concurrency=2`` 1-CPU actors on a 2-CPU Ray hang). Default: ``(CPUs - 1) /
    concurrency``, at most 1. A ``num_cpus`` that leaves less than one CPU is refused.
    Measured on the cluster as it is now (an autoscaling cluster may grow later).
    """
    if not ray.is_initialized():
        ray.init()
    cpus = float(ray.cluster_resources().get("CPU", 0.0))
    spare = max(cpus - 1.0, 0.0)
    if num_cpus is None:
        return min(1.0, spare / concurrency)
    if num_cpus < 0:
        raise InvalidInputError(f"num_cpus must be >= 0, got {num_cpus}")
    if num_cpus * concurrency > spare:
        raise InvalidInputError(
            f"{concurrency} actors with num_cpus={num_cpus:g} each take "
            f"{num_cpus * concurrency:g} of the cluster's {cpus:g} CPUs and leave less than "
            "the one CPU Ray Data's read tasks need: the run would wait forever. Pass "
            f"num_cpus={spare / concurrency:.3g} or less (--num-cpus), or fewer actors"
        )
    return num_cpus


def score_dataset(
    ds: Any,
    *,
    model: str | Path | Scorer,
    query_column: str = "query",
    document_column: str = "text",
    keep_text: bool = True,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    concurrency: int | None = None,
    batch_size: int = 512,
    **model_options: Any,
) -> Any:
    """A lazy ``ray.data.Dataset``: ``ds`` with ``score``, ``tokens``, ``truncated``, ``error``.

    ``model`` is a spec for :func:`~rerank_plugins.load_scorer` (``model_options`` go to
    it), loaded once in each actor; a :class:`~rerank_plugins.Scorer` instance is shipped
    to the actors instead (it must pickle). Rows are pairs (``document_column`` holds a
    string) or a query with a list of documents; rows with bad input keep null scores and
    say why in ``error``. ``num_gpus`` per actor defaults to 1 when the cluster has GPUs
    (one actor per GPU), else 0; ``concurrency`` (the number of actors) defaults to the
    number of GPUs, else 1. ``num_cpus`` per actor defaults to what leaves one CPU of the
    cluster to the read and write tasks (``(CPUs - 1) / concurrency``, at most 1); one that
    leaves less is refused with :class:`InvalidInputError` (else the run would hang).
    """
    if batch_size <= 0:
        raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
    if num_gpus is None or concurrency is None:
        gpus = cluster_gpus()
        if num_gpus is None:
            num_gpus = 1.0 if gpus > 0 else 0.0
        if concurrency is None:
            concurrency = max(1, int(gpus // num_gpus)) if num_gpus > 0 else 1
    if concurrency <= 0:
        raise InvalidInputError(f"concurrency must be positive, got {concurrency}")
    resources: dict[str, Any] = {
        "num_gpus": num_gpus,
        "num_cpus": _actor_cpus(num_cpus, concurrency),
    }
    # Blocks of one batch each: a read task makes one block per file (or per 128 MiB), and
    # a block goes to one actor, so without this one large file would keep one actor busy.
    # Streaming (no shuffle, order kept).
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(
        _ScoreBatches,
        fn_constructor_kwargs={
            "model": model,
            "model_options": model_options,
            "query_column": query_column,
            "document_column": document_column,
            "keep_text": keep_text,
        },
        batch_format="pyarrow",
        batch_size=batch_size,
        # A fixed pool of `concurrency` actors (Ray >= 2.51 deprecates `concurrency=` here).
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        **resources,
    )


def score_file_on_ray(
    input_path: str | Path,
    output: str | Path,
    *,
    address: str | None = None,
    model: str | Path | Scorer,
    query_column: str = "query",
    document_column: str = "text",
    keep_text: bool = True,
    model_options: dict[str, Any] | None = None,
    num_gpus: float | None = None,
    num_cpus: float | None = None,
    concurrency: int | None = None,
    batch_size: int = 512,
    progress: bool | None = None,
) -> BulkSummary:
    """``rerank-plugins score --ray``: read, :func:`score_dataset`, write, on a Ray cluster.

    Connects to ``address`` (or ``RAY_ADDRESS``, or starts a local Ray) unless Ray is
    already initialised. Parquet in, Parquet files out (JSONL in, JSONL out) under the
    ``output`` directory, in input order; rows that could not be scored are also listed
    in ``output/_errors/errors.jsonl``. A Ray run is not resumable: rerun it whole.
    ``progress`` turns Ray Data's progress bars on or off (default: Ray Data's setting).
    """
    started = time.perf_counter()
    fmt = input_format(input_path)
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInputError(f"{out} exists and is not empty; choose a new output")
    if not ray.is_initialized():
        # Ray's own INFO lines (start-up, dashboard) are not this command's output.
        ray.init(address=address, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    if progress is not None:  # --progress / --no-progress; else Ray Data's default
        context.enable_progress_bars = progress
    context.execution_options.preserve_order = True  # input order in the output files
    source = str(Path(input_path).resolve())
    ds = (
        ray.data.read_parquet(source)
        if fmt == "parquet"
        else ray.data.read_json(source, lines=True)
    )
    scored = score_dataset(
        ds,
        model=model,
        query_column=query_column,
        document_column=document_column,
        keep_text=keep_text,
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        concurrency=concurrency,
        batch_size=batch_size,
        **(model_options or {}),
    )
    if fmt == "parquet":
        scored.write_parquet(str(out.resolve()))
    else:
        scored.write_json(str(out.resolve()))
    return _summarise(out, fmt, document_column, time.perf_counter() - started)


def _summarise(out: Path, fmt: str, document_column: str, seconds: float) -> BulkSummary:
    """Count rows, errors and tokens in the written output; list the errors in ``_errors/``.

    Reads the output back a batch at a time (and only the small columns), so memory stays
    bounded however large the output is.
    """
    pa = require("pyarrow")
    pc = require("pyarrow.compute")
    pads = require("pyarrow.dataset")
    files = sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    dataset = pads.dataset(
        [str(p) for p in files], format="parquet" if fmt == "parquet" else "json"
    )
    rows = tokens = 0
    for batch in dataset.to_batches(columns=["tokens"]):
        column = batch.column(0)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            column = pc.list_flatten(column)
        rows += batch.num_rows
        tokens += int(pc.sum(column).as_py() or 0)
    errors = 0
    keep = [c for c in dataset.schema.names if c != document_column]
    for batch in dataset.to_batches(columns=keep, filter=pc.field("error").is_valid()):
        if not batch.num_rows:
            continue
        if not errors:
            (out / "_errors").mkdir(exist_ok=True)
        with (out / "_errors" / "errors.jsonl").open("a", encoding="utf-8") as f:
            for record in batch.to_pylist():
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        errors += batch.num_rows
    summary = BulkSummary(
        output=str(out),
        rows=rows,
        errors=errors,
        tokens=tokens,
        shards=len(files),
        seconds=round(seconds, 3),
    )
    (out / "_SUCCESS").write_text(summary.to_json() + "\n", encoding="utf-8")
    return summary
