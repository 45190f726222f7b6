"""Bulk scoring of Parquet and JSONL files, resumable, in completed shards.

A row is either a pair (``query`` and one document string) or a query with a list of
documents. :func:`score_table` scores an Arrow table of such rows through any
:class:`~rerank_plugins.Scorer` (the Ray Data UDF in :mod:`rerank_plugins.ray` uses it
too); :func:`score_file` runs it over a whole file on one machine::

    OUTPUT/
      _manifest.json             input/model identity, options, shard checksums (manifest.py)
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

Needs the ``bulk`` extra (pyarrow, tqdm); importing this package imports neither.
"""

from __future__ import annotations

from rerank_plugins.bulk.files import BulkInterrupted, BulkSummary, input_format, score_file
from rerank_plugins.bulk.rows import OUTPUT_COLUMNS, RowResult, score_rows, score_table

__all__ = [
    "OUTPUT_COLUMNS",
    "BulkInterrupted",
    "BulkSummary",
    "RowResult",
    "input_format",
    "score_file",
    "score_rows",
    "score_table",
]
