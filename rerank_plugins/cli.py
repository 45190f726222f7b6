"""The ``rerank-plugins`` command line.

``rerank-plugins rerank QUERY [DOC ...]`` scores documents given as arguments, from a file
(``--file``: one per line, a JSON list of strings, or JSON lines) or from standard input,
and prints them ranked (a table, JSON with ``--json``, or JSON lines when the input was
JSON lines: each input object comes back with ``index``, ``score``, ``tokens`` and
``truncated`` added). Options go before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rerank_plugins import DEFAULT_MODEL, __version__
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.loading import load_scorer
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import check_scores
from rerank_plugins.serve.cli import add_serve_command, run_server

__all__ = ["main"]


def _parse_items(text: str, fmt: str) -> list[Any]:
    """The raw items of a document file: strings, or JSON values for ``json``/``jsonl``."""
    if fmt == "json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise InvalidInputError("a JSON document file must hold a list of strings")
        return data
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return [line for line in text.splitlines() if line.strip()]


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


def _parse_or_refuse(text: str, fmt: str, source: str) -> list[Any]:
    try:
        return _parse_items(text, fmt)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidInputError(f"{source} is not valid {fmt.upper()}: {exc}") from exc


def _read_items(args: argparse.Namespace, stdin: TextIO) -> list[Any]:
    """Documents as given: strings, or the JSON objects of a JSON / JSON-lines input."""
    documents: list[Any] = list(args.documents)
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
        documents += _parse_or_refuse(text, fmt, args.file)
        args.jsonl_input = fmt == "jsonl"
    elif not documents and not stdin.isatty():
        fmt = args.format or "lines"
        documents = _parse_or_refuse(_read_stdin(stdin), fmt, "standard input")
        args.jsonl_input = fmt == "jsonl"
    for i, item in enumerate(documents):
        _doc_text(item, i)  # every item checked before anything is loaded
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
_LOCAL_ONLY = {
    "device": "--device",
    "dtype": "--dtype",
    "batch_tokens": "--batch-tokens",
    "progress": "--progress/--no-progress",
    "max_length": "--max-length",
}
_REMOTE_ONLY = {"dialect": "--dialect", "api_key": "--api-key"}


def _is_remote(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def _options(args: argparse.Namespace) -> dict[str, Any]:
    remote = _is_remote(args.model)
    wrong = _LOCAL_ONLY if remote else _REMOTE_ONLY
    given = [flag for name, flag in wrong.items() if getattr(args, name, None) is not None]
    if given:
        where = "local models" if remote else "http(s) endpoints"
        raise InvalidInputError(f"{', '.join(given)} only apply to {where}")
    options: dict[str, Any] = {"overflow": args.overflow}
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if remote:
        dialect = args.dialect or "cohere"
        if args.dialect is not None:
            options["dialect"] = args.dialect
        if args.output is not None:
            options["score_kind"] = args.output
        if args.api_key is not None:
            options["api_key"] = args.api_key
        elif not os.environ.get("RERANK_API_KEY") and os.environ.get(
            _DIALECT_KEY_ENV.get(dialect, "")
        ):
            options["api_key_env"] = _DIALECT_KEY_ENV[dialect]
        return options
    for name in ("device", "dtype", "batch_tokens", "output"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # A bar only where someone watches: stderr a terminal and more than a few batches
    # (show_progress=None), unless --progress / --no-progress says otherwise.
    options["show_progress"] = args.progress
    return options


def _rerank(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    items = _read_items(args, stdin)
    documents = [_doc_text(item, i) for i, item in enumerate(items)]
    options = _options(args)
    scorer = load_scorer(args.model, **options)
    scores = check_scores(scorer.score(args.query, documents), len(documents))
    ranked = rank(scores, top_n=args.top_n, score_threshold=args.threshold)
    if args.jsonl_input and not args.json:
        # JSON lines in, JSON lines out: each object keeps its own fields (id, metadata).
        for r in ranked:
            item = items[r.index]
            record = dict(item) if isinstance(item, dict) else {"text": item}
            record.update(
                index=r.index,
                score=r.score.value,
                tokens=r.score.tokens,
                truncated=r.score.truncated,
            )
            stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        return 0
    if args.json:
        rows = [
            {
                "rank": position + 1,
                "index": r.index,
                "score": r.score.value,
                "kind": r.score.kind,
                "tokens": r.score.tokens,
                "truncated": r.score.truncated,
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
        row = f"{position + 1:>4}  {r.score.value:>10.4f}  {r.index:>5}  {tokens:>6}"
        stdout.write(f"{row}  {preview}{cut}\n")
    return 0


def _add_rerank_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The subcommand's options, on the top-level parser too so that they are accepted
    before the subcommand as well. The subcommand's copy has no defaults (``defaults=False``),
    so it does not reset a value given before it."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    model = os.environ.get("RERANK_MODEL") or DEFAULT_MODEL
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
        "-m",
        "--model",
        default=default(model),
        help="hub id, local checkpoint directory or http(s) endpoint "
        f"(default: $RERANK_MODEL, else {DEFAULT_MODEL})",
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
        "--output",
        choices=["probability", "logit"],
        default=default(None),
        help="score as sigmoid probability (default) or raw logit",
    )
    add("--device", default=default(None), help="auto (default), cpu, cuda, cuda:1, ...")
    add(
        "--dtype",
        default=default(None),
        help="auto (default: bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16",
    )
    add(
        "--max-length",
        type=int,
        default=default(None),
        help="token window (default: the model's own)",
    )
    add(
        "--batch-tokens",
        type=int,
        default=default(None),
        help="token budget per forward pass (local models)",
    )
    add(
        "--overflow",
        choices=["truncate", "error"],
        default=default("truncate"),
        help="documents over the window: truncate and flag them (default) or fail",
    )
    add(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=default(None),
        help="progress bar on stderr (default: when stderr is a terminal and the "
        "job is more than a few batches)",
    )
    add(
        "--dialect",
        default=default(None),
        help="remote endpoint API dialect (cohere, tei, voyage, mixedbread, nim, vllm-score)",
    )
    add(
        "--api-key",
        default=default(None),
        help="remote endpoint key (default: $RERANK_API_KEY, else the dialect's own "
        "variable: $COHERE_API_KEY, $VOYAGE_API_KEY, $MXBAI_API_KEY, "
        "$NVIDIA_API_KEY)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-plugins",
        description="Long-context reranking from the command line. "
        "Options are accepted before or after the subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_rerank_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True)
    rr = commands.add_parser("rerank", help="rank documents by relevance to a query")
    rr.add_argument("query", help="the query")
    rr.add_argument("documents", nargs="*", help="documents (or use --file / stdin)")
    # SUPPRESS defaults: a value given before the subcommand is not reset by the
    # subcommand's parser.
    _add_rerank_options(rr, defaults=False)
    add_serve_command(commands)
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (2 for a rerank error)."""
    args = _parser().parse_args(argv)
    if args.command == "serve":  # a long-running server: its own logging and errors
        return run_server(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _rerank(args, stdout or sys.stdout, stdin or sys.stdin)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
