"""The ``rerank-plugins`` command line.

``rerank-plugins rerank QUERY [DOC ...]`` scores documents given as arguments, from a file
(``--file``: one per line, a JSON list of strings, or JSON lines) or from standard input,
and prints them ranked (a table, or JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from rerank_plugins import DEFAULT_MODEL, __version__
from rerank_plugins.bulk import add_score_arguments, score_file, score_options
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.loading import load_scorer
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import check_scores

__all__ = ["main"]


def _parse_documents(text: str, fmt: str) -> list[str]:
    """Documents from text: ``lines`` (blank lines skipped), ``json`` or ``jsonl``."""
    if fmt == "json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise InvalidInputError("a JSON document file must hold a list of strings")
        return [_doc_text(item, i) for i, item in enumerate(data)]
    if fmt == "jsonl":
        return [
            _doc_text(json.loads(line), i)
            for i, line in enumerate(text.splitlines())
            if line.strip()
        ]
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


def _read_documents(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    documents = list(args.documents)
    if args.file:
        if args.file == "-":
            text = stdin.read()
        else:
            try:
                text = Path(args.file).read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidInputError(f"cannot read {args.file}: {exc}") from exc
        try:
            documents += _parse_documents(text, _format_of(args.file, args.format))
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{args.file} is not valid JSON: {exc}") from exc
    elif not documents and not stdin.isatty():
        documents = _parse_documents(stdin.read(), args.format or "lines")
    if not documents:
        raise InvalidInputError("no documents: pass them as arguments, with --file, or on stdin")
    return documents


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"overflow": args.overflow}
    if args.device is not None:
        options["device"] = args.device
    if args.max_length is not None:
        options["max_length"] = args.max_length
    if args.dialect is not None:
        options["dialect"] = args.dialect
    return options


def _rerank(args: argparse.Namespace, stdout: TextIO, stdin: TextIO) -> int:
    documents = _read_documents(args, stdin)
    scorer = load_scorer(args.model, **_options(args))
    scores = check_scores(scorer.score(args.query, documents), len(documents))
    ranked = rank(scores, top_n=args.top_n, score_threshold=args.threshold)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rerank-plugins", description="Long-context reranking from the command line."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    rr = commands.add_parser("rerank", help="rank documents by relevance to a query")
    rr.add_argument("query", help="the query")
    rr.add_argument("documents", nargs="*", help="documents (or use --file / stdin)")
    rr.add_argument("-f", "--file", help="read documents from this file ('-' for stdin)")
    rr.add_argument(
        "--format",
        choices=["lines", "json", "jsonl"],
        help="document file format (default: from the suffix; one document per line)",
    )
    rr.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local checkpoint directory or http(s) endpoint (default: {DEFAULT_MODEL})",
    )
    rr.add_argument("-n", "--top-n", type=int, help="keep only the best N documents")
    rr.add_argument("--threshold", type=float, help="drop documents scoring below this")
    rr.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rr.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    rr.add_argument("--max-length", type=int, help="token window (default: the model's own)")
    rr.add_argument(
        "--overflow",
        choices=["truncate", "error"],
        default="truncate",
        help="documents over the window: truncate and flag them (default) or fail",
    )
    rr.add_argument("--dialect", help="remote endpoint API dialect (cohere, tei, ...)")
    sc = commands.add_parser("score", help="score a Parquet/JSONL file of pairs (resumable)")
    add_score_arguments(sc, default_model=DEFAULT_MODEL)
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
            progress=False if args.no_progress else None,
            **common,
        )
    stdout.write(summary.to_json() + "\n")
    return 0


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stdin: TextIO | None = None
) -> int:
    """Run the command line; returns the exit status (2 for a rerank error)."""
    args = _parser().parse_args(argv)
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
