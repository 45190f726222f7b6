"""``ServeOptions``: everything one server (``rerank-plugins serve``, with or without
``--ray``) is started with, as one value the command line builds and the runners read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rerank_plugins.batching.batcher import DEFAULT_PREEMPT_AFTER
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.loading import is_remote
from rerank_plugins.serve.connections import ConnectionLimits
from rerank_plugins.wire import API_KEY_ENV

__all__ = ["DEFAULT_BATCH_TOKENS", "DEFAULT_PREEMPT_AFTER", "LOOPBACK_HOSTS", "ServeOptions"]

DEFAULT_BATCH_TOKENS = 16384
"""The batcher's token budget when neither the options nor the scorer give one (TEI's);
:func:`rerank_plugins.serve.create_app` and ``serve --ray`` use it."""

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How to serve ``model``: the scorer's options, the batcher's limits, the socket."""

    model: str
    model_options: dict[str, Any] = field(default_factory=dict)
    """``load_scorer`` options (``device``, ``dtype``, ``dialect``, ...) but the budget."""
    batch_tokens: int | None = None
    """Token budget of one forward (default: the scorer's own, else 16384)."""
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    max_batch_requests: int | None = None
    preempt_after: float | None = DEFAULT_PREEMPT_AFTER
    """Seconds a batch holding a large request runs before small requests queued meanwhile
    run between its layers (``None``: never)."""
    max_client_batch_size: int = 1000
    max_body_bytes: int = 32 * 2**20
    max_queued_tokens: int | None = None
    graceful_timeout: float = 60.0
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """Header and body time limits, header size, connection cap."""
    docs: bool = False
    """Serve ``/docs`` and ``/redoc`` (their pages load scripts from a CDN)."""
    api_key: str | None = field(default=None, repr=False)
    """The bearer key clients must send (``None``: ``$RERANK_API_KEY``, else open)."""
    workers: int = 1
    log_level: str = "info"

    def check(self) -> None:
        """Raise :class:`~rerank_plugins.errors.InvalidInputError` for a limit that is not
        positive (named by its flag) or a key that is blank."""
        key = self.resolved_api_key()
        if key is not None and not key.strip():
            raise InvalidInputError(
                "the API key is empty or only whitespace; give a real key or none (an open server)"
            )
        if self.preempt_after is not None and not self.preempt_after >= 0:
            raise InvalidInputError(
                f"--preempt-after-ms must be 0 or more, got {self.preempt_after * 1000:g}"
            )
        for name in ("batch_tokens", "max_batch_requests", "max_queued_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                flag = "--" + name.replace("_", "-")
                raise InvalidInputError(f"{flag} must be positive, got {value}")

    def scorer_options(self, batch_tokens: int | None = None) -> dict[str, Any]:
        """``load_scorer`` options: the model options, plus the token budget (this one, else
        ``batch_tokens``) for a local model; a remote scorer takes no budget."""
        options = dict(self.model_options)
        budget = self.batch_tokens if self.batch_tokens is not None else batch_tokens
        if budget is not None and not is_remote(self.model):
            options["batch_tokens"] = budget
        return options

    def resolved_api_key(self) -> str | None:
        """The key given, else ``$RERANK_API_KEY`` (unless empty), else ``None`` (open)."""
        if self.api_key is not None:
            return self.api_key
        return os.environ.get(API_KEY_ENV) or None

    def open_to_the_network(self) -> str | None:
        """A warning when the server listens beyond this machine without a key, else None."""
        if self.host in LOOPBACK_HOSTS or self.resolved_api_key():
            return None
        return (
            f"SERVING ON {self.host}:{self.port} WITHOUT AN API KEY: anyone who can reach it "
            f"can use it; set ${API_KEY_ENV} or --api-key-file, or bind 127.0.0.1"
        )

    def app_options(self, *, batch_tokens: int | None) -> dict[str, Any]:
        """:func:`rerank_plugins.serve.create_app` keyword arguments."""
        return {
            "model_name": self.served_model_name or str(self.model),
            "max_batch_tokens": batch_tokens,
            "max_batch_requests": self.max_batch_requests,
            "preempt_after": self.preempt_after,
            "max_client_batch_size": self.max_client_batch_size,
            "max_queued_tokens": self.max_queued_tokens,
            "max_body_bytes": self.max_body_bytes,
            "body_timeout": self.limits.body_timeout,
            "docs": self.docs,
            "api_key": self.resolved_api_key(),
        }
