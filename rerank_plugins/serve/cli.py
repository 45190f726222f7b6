"""``rerank-plugins serve``: its arguments and its main, registered by ``rerank_plugins.cli``.

The model is loaded and warmed up before the port is bound; SIGTERM (or Ctrl-C) stops
accepting connections, lets in-flight requests finish (up to ``--graceful-timeout``) and
exits 0. One process serves one device: for several GPUs run one server per device
(``--device cuda:1 --port 8001``) or replicas behind a load balancer / Ray Serve.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from rerank_plugins._model_args import add_model_options, is_remote, load_model, model_options
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.wire import API_KEY_ENV

__all__ = ["API_KEY_ENV", "add_serve_command", "default_batch_tokens", "run_server"]

logger = logging.getLogger(__name__)

_CPU_BATCH_TOKENS = 16384  # TEI's default; on CPU a larger forward buys no throughput


def add_serve_command(commands: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``add_subparsers()`` object."""
    sv = commands.add_parser(
        "serve",
        help="serve a model over HTTP (Cohere/Jina, TEI and vLLM rerank APIs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    sv.add_argument("--port", type=int, default=8000)
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
    limits = sv.add_argument_group("batching and limits")
    limits.add_argument(
        "--max-batch-tokens",
        dest="batch_tokens",
        type=int,
        default=argparse.SUPPRESS,
        help="TEI's name for --batch-tokens: the token budget of one forward (default: "
        "16384 on CPU, more on large GPUs)",
    )
    limits.add_argument(
        "--max-batch-requests",
        type=int,
        help="requests merged into one forward at most (default: no limit; 1 turns "
        "batching across requests off)",
    )
    limits.add_argument(
        "--max-client-batch-size", type=int, default=1000, help="documents per request (413 over)"
    )
    limits.add_argument(
        "--max-body-bytes", type=int, default=32 * 2**20, help="request body limit (413 over)"
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
        help="seconds in-flight requests get to finish on SIGTERM",
    )
    sv.add_argument(
        "--api-key",
        help=f"require Authorization: Bearer KEY (default: ${API_KEY_ENV}; none: open)",
    )
    sv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes: 1. One process per device: run one server per device or replicas "
        "(e.g. Ray Serve) to scale out",
    )
    sv.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return sv


def default_batch_tokens(device: str | None) -> int:
    """16384 on CPU (and for remote scorers); on CUDA 16384 per 10 GiB, up to 131072."""
    if device is not None and not device.startswith(("auto", "cuda")):
        return _CPU_BATCH_TOKENS
    try:
        import torch
    except ImportError:
        return _CPU_BATCH_TOKENS
    if not torch.cuda.is_available():
        return _CPU_BATCH_TOKENS
    index = torch.device(device if device and device != "auto" else "cuda").index or 0
    gib = torch.cuda.get_device_properties(index).total_memory / 2**30
    return int(_CPU_BATCH_TOKENS * max(1, min(8, int(gib // 10))))


def _model_options(args: argparse.Namespace, batch_tokens: int | None) -> dict[str, Any]:
    # The budget bounds the batcher for any model; only a local scorer takes it too.
    options = model_options(argparse.Namespace(**{**vars(args), "batch_tokens": None}))
    if not is_remote(args.model) and batch_tokens is not None:
        options["batch_tokens"] = batch_tokens
    if getattr(args, "overflow", None) == "chunk":
        options["overflow"] = "chunk"
    return options


def run_server(args: argparse.Namespace) -> int:
    """Load, warm up and serve until SIGTERM/SIGINT; the exit status (2: bad setup)."""
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        app, host, port = _build(args)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins serve: error: {exc}\n")
        return 2
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # ours logs without query strings or headers
        log_config=None,  # keep the logging configured above
        log_level=args.log_level,
        server_header=False,
        timeout_graceful_shutdown=args.graceful_timeout,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler
    # makes that a clean exit 0 (the shutdown itself was graceful).
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if server.started else 1


def _build(args: argparse.Namespace) -> tuple[Any, str, int]:
    from rerank_plugins._imports import require

    for dependency in ("fastapi", "uvicorn", "prometheus_client"):
        require(dependency)
    from rerank_plugins.serve.app import create_app

    if args.workers != 1:
        raise InvalidInputError(
            "--workers: one process serves one device; run one server per device "
            "(--device cuda:N --port ...) or replicas behind a load balancer / Ray Serve"
        )
    for flag in ("batch_tokens", "max_batch_requests", "max_queued_tokens"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InvalidInputError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    # None: the scorer's own budget (a local scorer sizes it for its device), which the
    # app's batcher then asks the scorer for.
    batch_tokens = args.batch_tokens
    options = _model_options(args, batch_tokens)
    logger.info("loading %s", args.model)
    try:
        scorer = load_model(args.model, options)
    except TypeError as exc:  # an option this kind of model does not take (e.g. --layer)
        raise InvalidInputError(f"{args.model}: {exc}") from exc
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "serving on %s without an API key (--api-key or $%s)", args.host, API_KEY_ENV
        )
    app = create_app(
        scorer,
        model_name=args.served_model_name or str(args.model),
        max_batch_tokens=batch_tokens,
        max_batch_requests=args.max_batch_requests,
        max_client_batch_size=args.max_client_batch_size,
        max_queued_tokens=args.max_queued_tokens,
        max_body_bytes=args.max_body_bytes,
        api_key=api_key,
    )
    return app, args.host, args.port
