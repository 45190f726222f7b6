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

from rerank_plugins import __version__
from rerank_plugins._model_args import add_model_options, is_remote, load_model, model_options
from rerank_plugins.bulk import add_score_arguments, score_file, score_options
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.loading import load_scorer
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import Score, score_groups
from rerank_plugins.serve.cli import add_serve_command, run_server
from rerank_plugins.wire import API_KEY_ENV

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
# model options are checked by rerank_plugins._model_args).
_LOCAL_ONLY = {"progress": "--progress/--no-progress"}
_REMOTE_ONLY = {"api_key": "--api-key"}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = model_options(args, local_only=_LOCAL_ONLY, remote_only=_REMOTE_ONLY)
    options["overflow"] = args.overflow
    if is_remote(args.model):
        dialect = args.dialect or "cohere"
        if args.output is not None:
            options["score_kind"] = args.output
        if args.api_key is not None:
            options["api_key"] = args.api_key
        elif not os.environ.get(API_KEY_ENV) and os.environ.get(_DIALECT_KEY_ENV.get(dialect, "")):
            options["api_key_env"] = _DIALECT_KEY_ENV[dialect]
        return options
    if args.output is not None:
        options["output"] = args.output
    # A bar only where someone watches: stderr a terminal and more than a few batches
    # (show_progress=None), unless --progress / --no-progress says otherwise.
    options["show_progress"] = args.progress
    return options


def _rerank(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    items = _read_items(args, stdin)
    # Every item is checked here, before anything is loaded.
    documents = [_doc_text(item, i) for i, item in enumerate(items)]
    options = _options(args)
    scorer = load_model(args.model, options, load=load_scorer)
    (scores,) = score_groups(scorer, [(args.query, documents)])
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
                **_extras(r.score),
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
        row = f"{position + 1:>4}  {r.score.value:>10.4f}  {r.index:>5}  {tokens:>6}"
        stdout.write(f"{row}  {preview}{cut}\n")
    return 0


def _extras(score: Score) -> dict[str, int]:
    """``chunks`` (a document scored in windows) and ``stage`` (a cascade), when set."""
    return {
        name: value
        for name, value in (("chunks", score.chunks), ("stage", score.stage))
        if value is not None
    }


def _add_rerank_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
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
        "--output",
        choices=["probability", "logit"],
        default=default(None),
        help="score as sigmoid probability (default) or raw logit",
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
    sv = add_serve_command(commands)
    on_ray = sv.add_argument_group("Ray Serve (rerank-plugins[ray])")
    on_ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="deploy on Ray Serve (ADDRESS, else $RAY_ADDRESS or a local Ray); same HTTP API",
    )
    on_ray.add_argument("--num-replicas", type=int, help="default: one per GPU, else 1")
    on_ray.add_argument("--replica-gpus", type=float, help="GPUs per replica (default: 1 if any)")
    on_ray.add_argument("--replica-cpus", type=float, help="CPUs per replica (default: Ray's 1)")
    sc = commands.add_parser("score", help="score a Parquet/JSONL file of pairs (resumable)")
    add_score_arguments(sc)
    return parser


def _score(args: argparse.Namespace, stdout: TextIO) -> int:
    """``rerank-plugins score``: resumable shards on this machine, or a Ray cluster (--ray)."""
    common: dict[str, Any] = {
        "model": args.model,
        "query_column": args.query_column,
        "document_column": args.document_column,
        "keep_text": not args.drop_text,
        "model_options": score_options(args),
    }
    if args.ray is not None:
        if args.resume:
            raise InvalidInputError("--resume is for the single-machine run; rerun --ray whole")
        from rerank_plugins.ray import score_file_on_ray

        ray_options = {"num_gpus": args.num_gpus, "num_cpus": args.num_cpus}
        summary = score_file_on_ray(
            args.input,
            args.output,
            address=args.ray or None,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            **ray_options,
            **common,
        )
    else:
        summary = score_file(
            args.input,
            args.output,
            shard_rows=args.shard_rows,
            resume=args.resume,
            progress=False if args.no_progress else args.progress,
            **common,
        )
    stdout.write(summary.to_json() + "\n")
    return 0


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (2 for a rerank error)."""
    args = _parser().parse_args(argv)
    if args.command == "serve":  # a long-running server: its own logging and errors
        if args.ray is not None:
            from rerank_plugins.ray import serve_on_ray

            return serve_on_ray(args)
        return run_server(args)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "score":
            return _score(args, stdout or sys.stdout)
        return _rerank(args, stdout or sys.stdout, stdin or sys.stdin)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins: error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
