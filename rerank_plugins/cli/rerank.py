"""``rerank-plugins rerank QUERY [DOC ...]``: score documents given as arguments, from a
file (``--file``: one per line, a JSON list of strings, or JSON lines) or from standard
input, and print them ranked (a table, JSON with ``--json``, or JSON lines when the input
was JSON lines: each input object comes back with ``index``, ``score``, ``tokens`` and
``truncated`` added). Options go before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any, TextIO

from rerank_plugins.cli.model_options import add_model_options, model_options
from rerank_plugins.errors import InvalidInputError, UnknownOptionError
from rerank_plugins.loading import in_user_words, is_remote, load_model, load_scorer
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import Score, score_groups
from rerank_plugins.wire import API_KEY_ENV

__all__ = ["add_rerank_options", "run"]

logger = logging.getLogger(__name__)


def _parse_items(text: str, fmt: str) -> list[tuple[int, Any]]:
    """The raw items of a document file, each with its position: strings, or JSON values
    for ``json``/``jsonl``. Blank lines are skipped but keep their place: a line's
    position is its line number - 1, so that ``index`` points back to the line."""
    if fmt == "json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise InvalidInputError("a JSON document file must hold a list of strings")
        return list(enumerate(data))
    lines = [(i, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if fmt == "jsonl":
        return [(i, json.loads(line)) for i, line in lines]
    return lines


def _doc_text(item: Any, i: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return str(item["text"])
    raise InvalidInputError(f"document {i} is neither a string nor an object with 'text'")


def _format_of(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower()
    return {".json": "json", ".jsonl": "jsonl"}.get(suffix, "lines")


def _read_stdin(stdin: TextIO) -> str:
    try:
        text = stdin.read()
        text.encode("utf-8")  # under a C locale Python reads bad bytes as lone surrogates
    except UnicodeError as exc:
        raise InvalidInputError(f"standard input is not UTF-8 text: {exc}") from exc
    return text


def _parse_or_refuse(text: str, fmt: str, source: str) -> list[tuple[int, Any]]:
    try:
        return _parse_items(text, fmt)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"{source} is not valid {fmt.upper()}: {exc}") from exc


def _read_items(args: argparse.Namespace, stdin: TextIO) -> list[tuple[int, Any]]:
    """Documents as given, each with its position (see :func:`_parse_items`; a file's
    positions follow the documents given as arguments): strings, or the JSON objects of
    a JSON / JSON-lines input."""
    documents: list[tuple[int, Any]] = list(enumerate(args.documents))
    args.jsonl_input = False
    if args.file:
        if args.file == "-":
            text = _read_stdin(stdin)
        else:
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(f"{args.file} is not UTF-8 text: {exc}") from exc
            except OSError as exc:
                raise InvalidInputError(f"cannot read {args.file}: {exc}") from exc
        fmt = _format_of(args.file, args.format)
        first = len(documents)
        documents += [(first + i, item) for i, item in _parse_or_refuse(text, fmt, args.file)]
        args.jsonl_input = fmt == "jsonl"
    elif not documents and not stdin.isatty():
        fmt = args.format or "lines"
        documents = _parse_or_refuse(_read_stdin(stdin), fmt, "standard input")
        args.jsonl_input = fmt == "jsonl"
    if not documents:
        raise InvalidInputError("no documents: pass them as arguments, with --file, or on stdin")
    return documents


# The variable each hosted API's own tools read for its key, tried after $RERANK_API_KEY.
_DIALECT_KEY_ENV = {
    "cohere": "COHERE_API_KEY",
    "voyage": "VOYAGE_API_KEY",
    "mixedbread": "MXBAI_API_KEY",
    "nim": "NVIDIA_API_KEY",
}
# The rerank subcommand's own options that only one kind of model takes (the shared
# model options are checked by rerank_plugins.cli.model_options).
_LOCAL_ONLY = {"progress": "--progress/--no-progress"}
_REMOTE_ONLY = {"api_key": "--api-key"}


def _score_kind(args: argparse.Namespace) -> str | None:
    """``--score-kind``, or its deprecated spelling ``--output`` (with a warning)."""
    old = getattr(args, "deprecated_output", None)
    if old is not None:
        logger.warning(
            "--output %s is deprecated: write --score-kind %s (-o/--output is the output "
            "directory of score)",
            old,
            old,
        )
    return args.score_kind if args.score_kind is not None else old


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = model_options(args, local_only=_LOCAL_ONLY, remote_only=_REMOTE_ONLY)
    options["overflow"] = args.overflow
    kind = _score_kind(args)
    if is_remote(args.model):
        dialect = args.dialect or "cohere"
        if kind is not None:
            options["score_kind"] = kind
        if args.api_key is not None:
            options["api_key"] = args.api_key
        elif not os.environ.get(API_KEY_ENV) and os.environ.get(_DIALECT_KEY_ENV.get(dialect, "")):
            options["api_key_env"] = _DIALECT_KEY_ENV[dialect]
        return options
    if kind is not None:
        options["output"] = kind
    # A bar only where someone watches: stderr a terminal and more than a few batches
    # (show_progress=None), unless --progress / --no-progress says otherwise.
    options["show_progress"] = args.progress
    return options


def run(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    """``rerank-plugins rerank``: read, score, rank and print; 0 on success."""
    given = _read_items(args, stdin)
    positions = [position for position, _ in given]  # what "index" reports
    items = [item for _, item in given]
    # Every item is checked here, before anything is loaded.
    documents = [_doc_text(item, position) for position, item in given]
    options = _options(args)
    try:
        scorer = load_model(args.model, options, load=load_scorer)
    except UnknownOptionError as exc:
        raise in_user_words(exc, args.model, options) from exc
    (scores,) = score_groups(scorer, [(args.query, documents)])
    ranked = rank(scores, top_n=args.top_n, score_threshold=args.threshold)
    if args.jsonl_input and not args.json:
        # JSON lines in, JSON lines out: each object keeps its own fields (id, metadata).
        for r in ranked:
            item = items[r.index]
            record = dict(item) if isinstance(item, dict) else {"text": item}
            record.update(
                index=positions[r.index],
                score=r.score.value,
                tokens=r.score.tokens,
                truncated=r.score.truncated,
                **_extras(r.score),
            )
            stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    if args.json:
        rows = [
            {
                "rank": position + 1,
                "index": positions[r.index],
                "score": r.score.value,
                "kind": r.score.kind,
                "tokens": r.score.tokens,
                "truncated": r.score.truncated,
                **_extras(r.score),
                "text": documents[r.index],
            }
            for position, r in enumerate(ranked)
        ]
        json.dump(rows, stdout, ensure_ascii=False, indent=2)
        stdout.write("\n")
        return 0
    stdout.write(f"{'rank':>4}  {'score':>10}  {'index':>5}  {'tokens':>6}  text\n")
    for position, r in enumerate(ranked):
        text = " ".join(documents[r.index].split())
        preview = text if len(text) <= 72 else text[:71] + "…"
        cut = " [truncated]" if r.score.truncated else ""
        tokens = "-" if r.score.tokens is None else str(r.score.tokens)
        index = positions[r.index]
        row = f"{position + 1:>4}  {r.score.value:>10.4f}  {index:>5}  {tokens:>6}"
        stdout.write(f"{row}  {preview}{cut}\n")
    return 0


def _extras(score: Score) -> dict[str, int]:
    """``chunks`` (a document scored in windows) and ``stage`` (a cascade), when set."""
    return {
        name: value
        for name, value in (("chunks", score.chunks), ("stage", score.stage))
        if value is not None
    }


def add_rerank_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The subcommand's options, on the top-level parser too so that they are accepted
    before the subcommand as well. The subcommand's copy has no defaults (``defaults=False``),
    so it does not reset a value given before it."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    add_model_options(parser, defaults=defaults)  # shared with serve
    add = parser.add_argument
    add(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log progress and throughput (INFO) to stderr",
    )
    add(
        "-f",
        "--file",
        default=default(None),
        help="read documents from this file ('-' for stdin)",
    )
    add(
        "--format",
        choices=["lines", "json", "jsonl"],
        default=default(None),
        help="document file format (default: from the suffix; one document per line)",
    )
    add(
        "-n",
        "--top-n",
        type=int,
        default=default(None),
        help="keep only the best N documents",
    )
    add(
        "--threshold",
        type=float,
        default=default(None),
        help="drop documents scoring below this",
    )
    add(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON instead of a table",
    )
    add(
        "--score-kind",
        choices=["probability", "logit"],
        default=default(None),
        help="score as sigmoid probability (default) or raw logit",
    )
    add(
        "--output",
        dest="deprecated_output",
        choices=["probability", "logit"],
        default=default(None),
        help="deprecated spelling of --score-kind (score's -o/--output names a directory)",
    )
    add(
        "--overflow",
        choices=["truncate", "error", "chunk"],
        default=default("truncate"),
        help="documents over the window: truncate and flag them (default), fail, or score "
        "them in token windows (chunk; see --chunk-tokens, --chunk-overlap, --aggregate)",
    )
    add(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="progress bar on stderr (default: when stderr is a terminal and the "
        "job is more than a few batches)",
    )
    add(
        "--api-key",
        default=default(None),
        help="remote endpoint key (default: $RERANK_API_KEY, else the dialect's own "
        "variable: $COHERE_API_KEY, $VOYAGE_API_KEY, $MXBAI_API_KEY, "
        "$NVIDIA_API_KEY)",
    )
