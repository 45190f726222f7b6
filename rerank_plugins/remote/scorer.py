"""``RemoteScorer``: the scoring protocol over a rerank HTTP endpoint, sync and async.

The scorer splits a call into batches, sends them concurrently and merges the scores back
in input order; it owns the HTTP clients it creates. What it sends is checked once in
:mod:`~rerank_plugins.remote.config`, one batch travels through
:mod:`~rerank_plugins.remote.transport`, and what an answer means is decided in
:mod:`~rerank_plugins.remote.outcome`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from rerank_plugins._options import Rebuildable, checked_options
from rerank_plugins.identity import redact_url
from rerank_plugins.remote import redaction
from rerank_plugins.remote.config import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    check_instruction,
    check_positive,
    check_positive_number,
    configure,
)
from rerank_plugins.remote.dialects import DialectName
from rerank_plugins.remote.limits import Deadline
from rerank_plugins.remote.outcome import Split, combine
from rerank_plugins.remote.retry import RetryPolicy
from rerank_plugins.remote.transport import Attempts, apost, post
from rerank_plugins.scoring import (
    OverflowPolicy,
    Score,
    ScoreKind,
    check_inputs,
)
from rerank_plugins.wire import API_KEY_ENV

__all__ = ["API_KEY_ENV", "DEFAULT_DEADLINE", "DEFAULT_TIMEOUT", "RemoteScorer"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RemoteScorer(Rebuildable):
    """Scores documents through a rerank endpoint (Cohere/vLLM/Infinity, TEI, Voyage, ...).

    ``base_url`` is the server's base URL (``http://host:8000``, ``.../v1``, ``.../v2``)
    or the full endpoint URL; ``dialect`` picks the API shape (see
    :mod:`rerank_plugins.remote.dialects`). Returns one :class:`Score` per document in
    input order, or raises an :class:`~rerank_plugins.errors.EndpointError` naming the
    documents that could not be scored.

    Options:

    - ``model``: the ``model`` field of the request (hosted APIs require it).
    - ``api_key``: sent as ``Authorization: Bearer``; default: ``$RERANK_API_KEY``
      (``api_key_env`` names another variable). Held as a ``SecretStr``.
    - ``overflow``: ``"truncate"`` (default) asks the server to cut documents over the
      model's window; ``"error"`` asks it to refuse them (needs a dialect with such a
      switch: tei, voyage, nim, vllm-score).
    - ``score_kind``: the kind of score to ask for and declare; default: the dialect's.
    - ``max_batch_size``: documents per request (default: the dialect's limit); larger
      calls are split and the parts sent concurrently, at most ``max_concurrency`` at a
      time per scorer.
    - ``timeout``: seconds or an ``httpx.Timeout`` (default :data:`DEFAULT_TIMEOUT`),
      per request (the read timeout bounds the whole body, so a dripping answer is a
      timed-out, retried attempt); ``deadline``: seconds for the whole call, retries
      included (default
      :data:`DEFAULT_DEADLINE`; :class:`EndpointTimeoutError` past it).
    - ``max_response_bytes``: the largest (decoded) answer accepted; default: sized from
      each request (1 MiB + twice the request + 512 bytes per document). Larger bodies,
      endless ones and decompression bombs raise :class:`ResponseTooLargeError` after
      reading at most that much.
    - ``instruction``: a decoder reranker's task instruction (Qwen3-Reranker's
      "Given a web search query, ..." replaced), sent with every request in the dialect's
      field: ``instruction`` (cohere, tei: what ``rerank-plugins serve`` reads),
      ``instruct`` (sglang). A dialect without such a field refuses it here
      (:class:`~rerank_plugins.errors.InvalidInputError`), never drops it; a server that
      does not know the field may ignore it. ``score`` / ``ascore`` take ``instruction=``
      per call too (the adapters' ``instruction``).
    - ``retry``: a :class:`RetryPolicy`. ``headers`` and ``extra_body`` are added to
      every request.
    - ``client`` / ``async_client``: your own ``httpx.Client`` / ``AsyncClient`` (not
      closed by the scorer); otherwise pooled clients are created on first use, and
      closed by :meth:`close` (or ``with``), or when the scorer is garbage-collected.

    Credentials in the URL (``https://user:pw@host``) are sent as Basic auth, never as
    part of the URL; the key, the URL's password and query values and credential headers
    are kept out of every log record (httpx's and httpcore's too). TLS certificate
    errors are not retried.

    Truncation: a server that reports it with the ``X-Truncated-Documents`` header (and
    ``X-Document-Tokens``), as ``rerank-plugins serve`` does in every dialect, gives
    scores with ``truncated=True`` (and their token counts). Other remote servers do not
    report it: their scores carry ``tokens=None`` and ``truncated=False``.

    Pickling or deep-copying gives a scorer with its own new HTTP clients (clients passed
    in do not travel) and the same key, still a ``SecretStr``.
    """

    @checked_options
    def __init__(
        self,
        base_url: str,
        *,
        dialect: DialectName = "cohere",
        model: str | None = None,
        api_key: str | SecretStr | None = None,
        api_key_env: str | None = API_KEY_ENV,
        overflow: OverflowPolicy = "truncate",
        score_kind: ScoreKind | None = None,
        max_batch_size: int | None = None,
        max_concurrency: int = 4,
        timeout: float | httpx.Timeout | None = None,
        deadline: float = DEFAULT_DEADLINE,
        max_response_bytes: int | None = None,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        instruction: str | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        check_positive("max_concurrency", max_concurrency)
        check_positive_number("deadline", deadline)
        # Registers the endpoint's secrets for redaction: the last step that can fail.
        self._endpoint, self._api_key, registered = configure(
            base_url,
            dialect=dialect,
            model=model,
            api_key=api_key,
            api_key_env=api_key_env,
            overflow=overflow,
            score_kind=score_kind,
            max_batch_size=max_batch_size,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            retry=retry,
            headers=headers,
            extra_body=extra_body,
            instruction=instruction,
        )
        endpoint = self._endpoint
        self.url = endpoint.display_url
        self.dialect: str = endpoint.name
        self.model = model
        self.instruction = endpoint.instruction
        self.overflow: OverflowPolicy = endpoint.overflow
        self.score_kind: ScoreKind = endpoint.score_kind
        self.max_batch_size = endpoint.max_batch_size
        self.max_concurrency = max_concurrency
        self.retry = endpoint.retry
        self.deadline = float(deadline)
        self.max_response_bytes = max_response_bytes
        self._client = client
        self._async_client = async_client
        self._owned = _Owned()
        self._owned_async_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._async_slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()
        # Sockets of a scorer dropped without close() are released when it is collected,
        # not whenever the clients themselves happen to be.
        self._finalizer = weakref.finalize(self, _release, self._owned, registered)

    # -- public API ---------------------------------------------------------------------

    @property
    def takes_instruction(self) -> bool:
        """Whether ``score`` / ``ascore`` take ``instruction=``: the dialect has a field
        for it (see :func:`rerank_plugins.scoring.takes_instruction`)."""
        return self._endpoint.dialect.instruction_field is not None

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        """One score per document, in input order (blocking). ``instruction`` replaces
        the scorer's for this call."""
        check_instruction(instruction, self._endpoint.dialect)
        docs = check_inputs(query, documents)
        if not docs:
            return []
        deadline = Deadline(self.deadline)
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = self._run_all(
            lambda positions: self._score_batch(query, docs, positions, deadline, instruction),
            batches,
        )
        return self._merge(batches, parts)

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        """One score per document, in input order (native async, ``httpx.AsyncClient``).
        ``instruction`` replaces the scorer's for this call."""
        check_instruction(instruction, self._endpoint.dialect)
        docs = check_inputs(query, documents)
        if not docs:
            return []
        deadline = Deadline(self.deadline)
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = await _gather_all(
            [
                self._ascore_batch(query, docs, positions, deadline, instruction)
                for positions in batches
            ]
        )
        return self._merge(batches, parts)

    def close(self) -> None:
        """Close the HTTP clients this scorer created (never ones passed in)."""
        with self._lock:
            client, self._owned.client = self._owned.client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the clients this scorer created, the async one included."""
        self.close()
        client, self._owned.async_client = self._owned.async_client, None
        if client is not None:
            await client.aclose()

    def __enter__(self) -> RemoteScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteScorer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def api_key(self) -> SecretStr | None:
        return self._api_key

    def identity(self) -> dict[str, Any]:
        """What changes this scorer's scores, with no secret in it: the URL without
        credentials or query, the dialect, the model name, the instruction, what is asked
        for (see ``rerank_plugins.identity``). ``extra_body`` counts by its hash only."""
        extra = json.dumps(dict(self._endpoint.extra_body), sort_keys=True).encode()
        return {
            "kind": "RemoteScorer",
            "url": redact_url(self.url),  # no user name either
            "dialect": self.dialect,
            "model": self.model,
            "instruction": self.instruction,
            "overflow": self.overflow,
            "score_kind": self.score_kind,
            "extra_body_sha256": hashlib.sha256(extra).hexdigest(),
        }

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super()._rebuild_arguments()
        # Live clients, locks and semaphores are made anew by the copy; the key travels as
        # the SecretStr already resolved (the copy may run where the variable is unset).
        kwargs.pop("client", None)
        kwargs.pop("async_client", None)
        kwargs["api_key"] = self._api_key
        kwargs["api_key_env"] = None
        return args, kwargs

    def __repr__(self) -> str:
        key = "SecretStr('**********')" if self._api_key is not None else "None"
        return (
            f"RemoteScorer({self.url!r}, dialect={self.dialect!r}, model={self.model!r}, "
            f"api_key={key}, score_kind={self.score_kind!r}, overflow={self.overflow!r})"
        )

    # -- batches: fan-out, splits, merge ------------------------------------------------

    def _merge(self, batches: list[list[int]], parts: list[list[Score]]) -> list[Score]:
        merged: list[Score | None] = [None] * sum(len(b) for b in batches)
        for positions, scores in zip(batches, parts, strict=True):
            for position, score in zip(positions, scores, strict=True):
                merged[position] = score
        scores = [s for s in merged if s is not None]
        if len(scores) != len(merged):  # batches cover every position exactly once
            raise RuntimeError(f"batches left documents unscored: {batches}")
        return scores

    def _run_all(
        self, fn: Callable[[list[int]], list[Score]], batches: list[list[int]]
    ) -> list[list[Score]]:
        if len(batches) == 1:
            return [fn(batches[0])]
        workers = min(self.max_concurrency, len(batches))
        with ThreadPoolExecutor(workers, thread_name_prefix="rerank-remote") as pool:
            futures = [pool.submit(fn, b) for b in batches]
            _, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()  # fail fast: batches not yet started are not sent
        failures = [
            exc for f in futures if not f.cancelled() and (exc := f.exception()) is not None
        ]
        if failures:
            raise combine(failures)
        return [f.result() for f in futures]

    def _attempts(
        self,
        client: httpx.Client | httpx.AsyncClient,
        query: str,
        docs: list[str],
        positions: list[int],
        deadline: Deadline,
        instruction: str | None,
    ) -> Attempts:
        content = self._endpoint.body(query, [docs[p] for p in positions], instruction=instruction)
        timeout = self._request_timeout(client)
        return Attempts(self._endpoint, content, positions, deadline, timeout)

    def _score_batch(
        self,
        query: str,
        docs: list[str],
        positions: list[int],
        deadline: Deadline,
        instruction: str | None,
    ) -> list[Score]:
        client = self._sync_client()
        attempts = self._attempts(client, query, docs, positions, deadline, instruction)
        step = post(client, attempts, self._slots)
        if not isinstance(step, Split):
            return step
        chunks = self._log_split(step, positions)
        return [v for c in chunks for v in self._score_batch(query, docs, c, deadline, instruction)]

    async def _ascore_batch(
        self,
        query: str,
        docs: list[str],
        positions: list[int],
        deadline: Deadline,
        instruction: str | None,
    ) -> list[Score]:
        client = self._async_http_client()
        attempts = self._attempts(client, query, docs, positions, deadline, instruction)
        step = await apost(client, attempts, self._async_semaphore())
        if not isinstance(step, Split):
            return step
        chunks = self._log_split(step, positions)
        parts = await _gather_all(
            [self._ascore_batch(query, docs, c, deadline, instruction) for c in chunks]
        )
        return [v for part in parts for v in part]

    def _log_split(self, split: Split, positions: list[int]) -> list[list[int]]:
        chunks = _chunks(positions, split.size)
        logger.info(
            "%s; resending %d documents in %d requests", split.error, len(positions), len(chunks)
        )
        return chunks

    # -- clients ------------------------------------------------------------------------

    def _request_timeout(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
        if self._endpoint.timeout is not None:
            return self._endpoint.timeout
        if client is self._owned.client or client is self._owned.async_client:
            return DEFAULT_TIMEOUT
        if client.timeout.read is None:  # a client passed in without a read timeout
            return DEFAULT_TIMEOUT
        return client.timeout

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )

    def _sync_client(self) -> httpx.Client:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._owned.client is None:
                self._owned.client = httpx.Client(
                    timeout=self._endpoint.timeout or DEFAULT_TIMEOUT, limits=self._limits()
                )
            return self._owned.client

    def _async_http_client(self) -> httpx.AsyncClient:
        if self._async_client is not None:
            return self._async_client
        loop = asyncio.get_running_loop()
        owner = self._owned_async_loop() if self._owned_async_loop is not None else None
        if self._owned.async_client is None or owner is not loop:
            # An AsyncClient's connections belong to one event loop: one client per loop.
            self._owned.async_client = httpx.AsyncClient(
                timeout=self._endpoint.timeout or DEFAULT_TIMEOUT, limits=self._limits()
            )
            self._owned_async_loop = weakref.ref(loop)
        return self._owned.async_client

    def _async_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slots = self._async_slots.get(loop)
        if slots is None:
            slots = self._async_slots[loop] = asyncio.Semaphore(self.max_concurrency)
        return slots


class _Owned:
    """The clients a scorer created; held apart from it so its finalizer can close them."""

    def __init__(self) -> None:
        self.client: httpx.Client | None = None
        self.async_client: httpx.AsyncClient | None = None


def _release(owned: _Owned, secrets: list[str]) -> None:
    """Finalizer of a dropped scorer: close its sync client, forget its secrets."""
    client, owned.client = owned.client, None
    if client is not None:
        client.close()
    # An AsyncClient can only be closed from its event loop (maybe gone by now); drop it.
    owned.async_client = None
    redaction.forget(secrets)


def _chunks(positions: list[int], size: int) -> list[list[int]]:
    return [positions[i : i + size] for i in range(0, len(positions), size)]


async def _gather_all(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Run ``coros`` concurrently; on the first failure cancel the rest and raise one
    error naming every failed batch's documents."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    failures = [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
    if failures:
        raise combine(failures)
    return [t.result() for t in tasks]
