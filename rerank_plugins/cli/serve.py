"""``rerank-plugins serve [--ray [ADDRESS]]``: its arguments, turned into one
:class:`~rerank_plugins.serve.options.ServeOptions` for one server or for Ray Serve.

The model is loaded and warmed up before the port is bound; SIGTERM (or Ctrl-C) stops
accepting connections, lets in-flight requests finish (up to ``--graceful-timeout``) and
exits 0. One process serves one device: for several GPUs run one server per device
(``--device cuda:1 --port 8001``) or replicas behind a load balancer / Ray Serve.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rerank_plugins.cli.model_options import add_model_options, model_options
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.serve.connections import ConnectionLimits
from rerank_plugins.serve.options import DEFAULT_BATCH_TOKENS, DEFAULT_PREEMPT_AFTER, ServeOptions
from rerank_plugins.wire import API_KEY_ENV

__all__ = ["add_serve_command", "run", "serve_options"]

_LIMITS = ConnectionLimits()  # the documented defaults (no server stack imported)


def add_serve_command(commands: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``add_subparsers()`` object."""
    sv = commands.add_parser(
        "serve",
        help="serve a model over HTTP (Cohere/Jina, TEI and vLLM rerank APIs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    sv.add_argument("--served-model-name", help="model name in answers (default: --model)")
    # The same model options as ``rerank`` (one definition); like there, they are also
    # accepted before the subcommand, so this copy has SUPPRESS defaults.
    add_model_options(sv.add_argument_group("model options"), defaults=False)
    sv.add_argument(
        "--overflow",
        choices=["truncate", "chunk"],
        default=argparse.SUPPRESS,
        help="documents over the window: truncate and flag (default; a request's "
        "truncate=false refuses them instead) or score them in token windows (chunk)",
    )
    _add_limits(sv.add_argument_group("batching and limits"))
    _add_connection_limits(sv.add_argument_group("connection limits (slow or endless clients)"))
    _add_access_and_logging(sv)
    _add_ray(sv.add_argument_group("Ray Serve (rerank-plugins[ray])"))
    return sv


def _preempt_after(text: str) -> float | None:
    """``--preempt-after-ms``: milliseconds (0 or more) as seconds, or ``off``."""
    if text.strip().lower() == "off":
        return None
    try:
        ms = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of milliseconds or 'off': {text!r}"
        ) from None
    if not ms >= 0 or ms == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more milliseconds, got {text!r}")
    return ms / 1000


def _add_limits(limits: Any) -> None:
    limits.add_argument(
        "--max-batch-tokens",
        dest="batch_tokens",
        type=int,
        default=argparse.SUPPRESS,
        help="TEI's name for --batch-tokens: the token budget of one forward (default: "
        f"the model's own; {DEFAULT_BATCH_TOKENS} for an endpoint)",
    )
    limits.add_argument(
        "--max-batch-requests",
        type=int,
        help="requests merged into one forward at most (default: no limit; 1 turns "
        "batching across requests off)",
    )
    limits.add_argument(
        "--preempt-after-ms",
        type=_preempt_after,
        default=DEFAULT_PREEMPT_AFTER,
        metavar="MS|off",
        help="a forward holding a large request gives way, between two layers, to the small "
        "requests queued after it has run this long: they need not wait for a long "
        f"document's whole forward (default: {DEFAULT_PREEMPT_AFTER * 1000:g}; off: never)",
    )
    limits.add_argument(
        "--max-client-batch-size",
        type=int,
        default=1000,
        help="documents per request (413 over; default: 1000)",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 2**20,
        help="request body limit (413 over; default: 32 MiB)",
    )
    limits.add_argument(
        "--max-queued-tokens",
        type=int,
        help="tokens waiting before requests get 429 + Retry-After (default: 32 batches)",
    )
    limits.add_argument(
        "--graceful-timeout",
        type=float,
        default=60.0,
        help="seconds in-flight requests get to finish on SIGTERM (default: 60)",
    )


def _add_connection_limits(conn: Any) -> None:
    conn.add_argument(
        "--header-timeout",
        type=float,
        default=_LIMITS.header_timeout,
        help="seconds a client has to send a request's headers; then the connection is "
        "closed (default: %(default)s)",
    )
    conn.add_argument(
        "--body-timeout",
        type=float,
        default=_LIMITS.body_timeout,
        help="seconds a request's body may take to arrive; then 408 (default: %(default)s)",
    )
    conn.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=_LIMITS.keep_alive_timeout,
        help="seconds an idle kept-alive connection stays open (default: %(default)s)",
    )
    conn.add_argument(
        "--max-header-bytes",
        type=int,
        default=_LIMITS.max_header_bytes,
        help="request line and headers at most; over: 400 (default: %(default)s)",
    )
    conn.add_argument(
        "--limit-concurrency",
        type=int,
        default=_LIMITS.limit_concurrency,
        help="connections and requests taken at once; over: 503 (default: %(default)s)",
    )


def _add_access_and_logging(sv: argparse.ArgumentParser) -> None:
    sv.add_argument(
        "--docs",
        action="store_true",
        help="serve Swagger UI at /docs and ReDoc at /redoc (default: off: their pages "
        "load scripts from a CDN and do not work offline; /openapi.json is always served)",
    )
    keys = sv.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        help=f"require Authorization: Bearer KEY (default: ${API_KEY_ENV}; none: open). "
        "A key on the command line shows in `ps`: prefer --api-key-file or the variable",
    )
    keys.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the key from this file (surrounding whitespace ignored; default: none)",
    )
    sv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes (default: 1, the only value: one process per device; run one "
        "server per device or replicas, e.g. Ray Serve, to scale out)",
    )
    sv.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="(default: info)",
    )
    sv.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="--log-level debug (default: off)",
    )


def _add_ray(on_ray: Any) -> None:
    on_ray.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="deploy on Ray Serve (ADDRESS, else $RAY_ADDRESS or a local Ray); same HTTP API "
        "(default: one server in this process)",
    )
    on_ray.add_argument("--num-replicas", type=int, help="default: one per GPU, else 1")
    on_ray.add_argument("--replica-gpus", type=float, help="GPUs per replica (default: 1 if any)")
    on_ray.add_argument("--replica-cpus", type=float, help="CPUs per replica (default: Ray's 1)")


def _api_key(args: argparse.Namespace) -> str | None:
    """The key of ``--api-key`` or ``--api-key-file`` (``None``: ``$RERANK_API_KEY``)."""
    if args.api_key_file is None:
        return args.api_key
    try:
        return Path(args.api_key_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the API key file {args.api_key_file}: {exc}") from exc


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The :class:`ServeOptions` of a parsed ``serve`` command line; an option for the
    other kind of model is an :class:`~rerank_plugins.errors.InvalidInputError`."""
    # The budget is not a load_scorer option here: the server gives it to the batcher too.
    scorer = model_options(argparse.Namespace(**{**vars(args), "batch_tokens": None}))
    if getattr(args, "overflow", None) == "chunk":  # else each request picks truncate or refuse
        scorer["overflow"] = "chunk"
    return ServeOptions(
        model=str(args.model),
        model_options=scorer,
        batch_tokens=getattr(args, "batch_tokens", None),
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        max_batch_requests=args.max_batch_requests,
        preempt_after=args.preempt_after_ms,
        max_client_batch_size=args.max_client_batch_size,
        max_body_bytes=args.max_body_bytes,
        max_queued_tokens=args.max_queued_tokens,
        graceful_timeout=args.graceful_timeout,
        limits=ConnectionLimits(
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            keep_alive_timeout=args.timeout_keep_alive,
            max_header_bytes=args.max_header_bytes,
            limit_concurrency=args.limit_concurrency,
        ),
        docs=args.docs,
        api_key=_api_key(args),
        workers=args.workers,
        log_level="debug" if args.verbose and args.log_level == "info" else args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    """``rerank-plugins serve``: one server, or Ray Serve with ``--ray``; exit 2 on bad setup."""
    try:
        options = serve_options(args)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins serve: error: {exc}\n")
        return 2
    if args.ray is not None:
        from rerank_plugins.ray import serve_on_ray

        return serve_on_ray(
            options,
            address=args.ray or None,
            num_replicas=args.num_replicas,
            replica_gpus=args.replica_gpus,
            replica_cpus=args.replica_cpus,
        )
    from rerank_plugins.serve.runner import run_server

    return run_server(options)
