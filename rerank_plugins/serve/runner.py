"""Run one server from :class:`~rerank_plugins.serve.options.ServeOptions`
(``rerank-plugins serve``; the command line in ``rerank_plugins.cli.serve`` builds them).

The model is loaded and warmed up before the port is bound; SIGTERM (or Ctrl-C) stops
accepting connections, lets in-flight requests finish (up to ``graceful_timeout``) and
exits 0. One process serves one device: for several GPUs run one server per device
(``--device cuda:1 --port 8001``) or replicas behind a load balancer / Ray Serve.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
from typing import Any

from rerank_plugins.errors import InvalidInputError, RerankError, UnknownOptionError
from rerank_plugins.serve.options import ServeOptions

__all__ = ["build_server", "check_port", "run_server"]

logger = logging.getLogger(__name__)


def run_server(options: ServeOptions) -> int:
    """Load, warm up and serve until SIGTERM/SIGINT; the exit status (2: bad setup)."""
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options.check()
        check_port(options.host, options.port)  # before minutes of loading, not after
        app = build_server(options)
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins serve: error: {exc}\n")
        return 2
    import uvicorn

    from rerank_plugins.serve.connections import uvicorn_config

    config = uvicorn_config(
        app,
        limits=options.limits,
        host=options.host,
        port=options.port,
        access_log=False,  # ours logs without query strings or headers
        log_config=None,  # keep the logging configured above
        log_level=options.log_level,
        server_header=False,
        timeout_graceful_shutdown=options.graceful_timeout,  # a float works
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


def check_port(host: str, port: int) -> None:
    """Raise :class:`InvalidInputError` when ``host:port`` cannot be bound (in use, no such
    address, a privileged port). uvicorn binds later, with ``SO_REUSEADDR`` as here."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # socket.gaierror included
        reason = exc.strerror or str(exc)
        raise InvalidInputError(
            f"cannot listen on {host}:{port}: {reason} (--host, --port)"
        ) from exc


def build_server(options: ServeOptions) -> Any:
    """The app :func:`run_server` serves: options checked, scorer loaded, app created."""
    from rerank_plugins._imports import require

    for dependency in ("fastapi", "uvicorn", "prometheus_client", "ijson"):
        require(dependency)
    from rerank_plugins.loading import in_user_words, load_model
    from rerank_plugins.serve.app import create_app

    if options.workers != 1:
        raise InvalidInputError(
            "--workers: one process serves one device; run one server per device "
            "(--device cuda:N --port ...) or replicas behind a load balancer / Ray Serve"
        )
    options.check()
    logger.info("loading %s", options.model)
    scorer_options = options.scorer_options()
    try:
        scorer = load_model(options.model, scorer_options)
    except UnknownOptionError as exc:  # an option this kind of model does not take
        raise in_user_words(exc, options.model, scorer_options) from exc
    except TypeError as exc:
        raise InvalidInputError(f"{options.model}: {exc}") from exc
    warning = options.open_to_the_network()
    if warning:
        logger.warning("%s", warning)
    # None: the app asks the scorer for its own budget (one policy, sized for its device).
    # This process only serves: the objects alive after the warm-up stay out of the
    # garbage collector's full collections (shorter GIL pauses, a lower p99).
    return create_app(
        scorer, **options.app_options(batch_tokens=options.batch_tokens), freeze_gc=True
    )
