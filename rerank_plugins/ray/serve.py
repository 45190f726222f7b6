"""Online serving on Ray Serve: :func:`serve_app` (replicas running the app of
``rerank-plugins serve``) and :func:`serve_on_ray` (``rerank-plugins serve --ray``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.errors import InvalidInputError, RerankError
from rerank_plugins.loading import load_scorer
from rerank_plugins.ray.data import cluster_gpus
from rerank_plugins.serve.options import DEFAULT_BATCH_TOKENS, ServeOptions

ray = require("ray")

__all__ = ["serve_app", "serve_on_ray"]

logger = logging.getLogger(__name__)


def serve_app(
    *,
    model: str | Path,
    num_replicas: int | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    model_options: dict[str, Any] | None = None,
    model_name: str | None = None,
    name: str = "rerank",
    **app_options: Any,
) -> Any:
    """A Ray Serve application serving ``model`` over the HTTP API of ``rerank-plugins serve``.

    Each replica loads one scorer (``load_scorer(model, **model_options)``) and runs the
    very app and micro-batcher of :func:`rerank_plugins.serve.create_app` (``app_options``
    go to it: ``max_batch_tokens``, ``api_key``, ...), so the paths, limits and answers are
    the same as one server's. ``ray_actor_options`` defaults to one GPU per replica when
    the cluster has GPUs, and ``num_replicas`` to one replica per GPU (else 1). Run it
    with ``ray.serve.run(serve_app(model=...))``.
    """
    serve = require("ray.serve")
    if ray_actor_options is None or num_replicas is None:
        gpus = cluster_gpus()
        if ray_actor_options is None:
            ray_actor_options = {"num_gpus": 1} if gpus > 0 else {}
        if num_replicas is None:
            per_replica = float(ray_actor_options.get("num_gpus") or 0)
            num_replicas = max(1, int(gpus // per_replica)) if per_replica > 0 else 1
    if num_replicas <= 0:
        raise InvalidInputError(f"num_replicas must be positive, got {num_replicas}")
    options = dict(model_options or {})
    served_name = model_name or str(model)

    def build_app() -> Any:
        # Runs in each replica: the scorer is loaded there, never pickled from here.
        from rerank_plugins.serve import create_app

        return create_app(load_scorer(model, **options), model_name=served_name, **app_options)

    deployment = serve.deployment(
        name=name, num_replicas=num_replicas, ray_actor_options=ray_actor_options
    )(serve.ingress(build_app)())
    return deployment.bind()


def serve_on_ray(
    options: ServeOptions,
    *,
    address: str | None = None,
    num_replicas: int | None = None,
    replica_gpus: float | None = None,
    replica_cpus: float | None = None,
) -> int:
    """``rerank-plugins serve --ray [ADDRESS]``: deploy :func:`serve_app` with the same
    :class:`~rerank_plugins.serve.options.ServeOptions` as one server, and serve until
    interrupted (then the deployment is removed). Exit status 2 for bad options."""
    logging.basicConfig(
        level=getattr(logging, options.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options.check()
        # The default of one server (the scorer's own budget) is not known here: the
        # replicas' GPUs are elsewhere. Give --max-batch-tokens for large GPUs.
        batch_tokens = options.batch_tokens or DEFAULT_BATCH_TOKENS
        actor_options: dict[str, Any] = {}
        if replica_gpus is not None:
            actor_options["num_gpus"] = replica_gpus
        if replica_cpus is not None:
            actor_options["num_cpus"] = replica_cpus
        app_options = options.app_options(batch_tokens=batch_tokens)
        warning = options.open_to_the_network()
        if warning:
            logger.warning("%s", warning)
        if not ray.is_initialized():
            ray.init(address=address)
        app = serve_app(
            model=options.model,
            num_replicas=num_replicas,
            ray_actor_options=actor_options or None,
            model_options=options.scorer_options(batch_tokens),
            **app_options,
        )
    except RerankError as exc:
        sys.stderr.write(f"rerank-plugins serve: error: {exc}\n")
        return 2
    serve = require("ray.serve")
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(app, name="rerank", route_prefix="/")
        logger.info(
            "serving %s on http://%s:%d (Ray Serve)", options.model, options.host, options.port
        )
        while not stop.wait(1.0):
            pass
        logger.info("stopping Ray Serve")
        serve.shutdown()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
