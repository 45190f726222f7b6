"""``RemoteScorer``: the scoring protocol over a rerank HTTP endpoint, sync and async."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from pydantic import SecretStr

from rerank_plugins._options import Rebuildable, checked_options
from rerank_plugins.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointInputTooLongError,
    EndpointStatusError,
    EndpointTimeoutError,
    InvalidInputError,
    MalformedResponseError,
)
from rerank_plugins.remote.dialects import (
    DialectName,
    RequestOptions,
    check_kind,
    endpoint_url,
    get_dialect,
    redact,
)
from rerank_plugins.remote.retry import (
    RetryPolicy,
    batch_limit_hint,
    is_retryable_status,
    is_retryable_transport_error,
    parse_retry_after,
    says_too_long,
    says_too_many_documents,
)
from rerank_plugins.scoring import OverflowPolicy, Score, ScoreKind, check_inputs

__all__ = ["API_KEY_ENV", "DEFAULT_TIMEOUT", "RemoteScorer"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=300.0)
"""Generous read timeout: a CPU server can take minutes for a batch of long documents.
The pool timeout covers waiting behind the other requests of a large call."""

API_KEY_ENV = "RERANK_API_KEY"
"""Environment variable read for the API key when none is given."""

_EXCERPT_CHARS = 300
_ISOLATE_LIMIT = 32  # split a length-refused batch to name its documents up to this size
_FORBIDDEN_EXTRA = frozenset({"top_n", "top_k"})
_USER_AGENT = "rerank-plugins/0.1.0"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Retry:
    delay: float
    error: EndpointError


class _BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` from a ``SecretStr``, set on each request as it leaves:
    the key is in no plain attribute, dict or repr of the scorer."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(SecretStr('**********'))"


class _Split(Exception):
    """Internal: resend this batch in chunks of ``size`` documents."""

    def __init__(self, size: int, error: EndpointError) -> None:
        super().__init__(str(error))
        self.size = size
        self.error = error


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
    - ``timeout``: seconds or an ``httpx.Timeout`` (default :data:`DEFAULT_TIMEOUT`).
    - ``retry``: a :class:`RetryPolicy`. ``headers`` and ``extra_body`` are added to
      every request.
    - ``client`` / ``async_client``: your own ``httpx.Client`` / ``AsyncClient`` (not
      closed by the scorer); otherwise pooled clients are created on first use.

    Remote servers do not report truncation: scores carry ``tokens=None`` and
    ``truncated=False``.

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
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._dialect = get_dialect(dialect)
        self._url = endpoint_url(base_url, self._dialect)
        self.url = redact(self._url)
        if overflow not in ("truncate", "error"):
            raise InvalidInputError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
        if overflow == "error" and not self._dialect.refuses_overflow:
            raise InvalidInputError(
                f"the {self._dialect.name!r} API has no switch that makes the server refuse "
                "over-length documents (the server decides), so overflow='error' cannot be "
                "honoured; use overflow='truncate' or a dialect with one "
                "(tei, voyage, nim, vllm-score)"
            )
        kinds = self._dialect.score_kinds
        if score_kind is None:
            score_kind = kinds[0]
        elif score_kind not in kinds:
            raise InvalidInputError(
                f"the {self._dialect.name!r} API returns {list(kinds)} scores, not {score_kind!r}"
            )
        if max_batch_size is None:
            max_batch_size = self._dialect.max_documents
        _check_positive("max_batch_size", max_batch_size)
        _check_positive("max_concurrency", max_concurrency)
        extra = dict(extra_body or {})
        forbidden = sorted(_FORBIDDEN_EXTRA & extra.keys())
        if forbidden:
            raise InvalidInputError(
                f"extra_body must not set {forbidden}: a scorer returns every document; "
                "top_n is applied after scoring (rank(..., top_n=...) or the adapters' top_n)"
            )
        self.dialect: str = self._dialect.name
        self.model = model
        self.overflow: OverflowPolicy = overflow
        self.score_kind: ScoreKind = score_kind
        self.max_batch_size = max_batch_size
        self.max_concurrency = max_concurrency
        self.retry = retry or RetryPolicy()
        self._options = RequestOptions(
            model=model, truncate=overflow == "truncate", score_kind=score_kind
        )
        self._extra_body = extra
        self._api_key = _resolve_key(api_key, api_key_env)
        self._headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
        self._headers.update(headers or {})
        if self._api_key is not None and (self._url.username or self._url.password):
            raise InvalidInputError(
                f"{self.url} carries credentials and an API key is set (argument or "
                f"${api_key_env}); give one or the other"
            )
        self._auth: httpx.Auth | Any = httpx.USE_CLIENT_DEFAULT
        if self._api_key is not None:
            self._auth = _BearerAuth(self._api_key)
            if self._url.scheme == "http" and not _is_loopback(self._url.host):
                logger.warning(
                    "sending an API key over unencrypted http to %s; use https", self._url.host
                )
        if timeout is not None and not isinstance(timeout, httpx.Timeout):
            timeout = httpx.Timeout(float(timeout))
        self._timeout = timeout
        self._client = client
        self._async_client = async_client
        self._owned_client: httpx.Client | None = None
        self._owned_async: httpx.AsyncClient | None = None
        self._owned_async_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._async_slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()

    # -- public API ---------------------------------------------------------------------

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        """One score per document, in input order (blocking)."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = self._run_all(lambda positions: self._score_batch(query, docs, positions), batches)
        return self._merge(batches, parts)

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        """One score per document, in input order (native async, ``httpx.AsyncClient``)."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = await _gather_all(
            [self._ascore_batch(query, docs, positions) for positions in batches]
        )
        return self._merge(batches, parts)

    def close(self) -> None:
        """Close the HTTP clients this scorer created (never ones passed in)."""
        with self._lock:
            client, self._owned_client = self._owned_client, None
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the clients this scorer created, the async one included."""
        self.close()
        client, self._owned_async = self._owned_async, None
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

    # -- batches ------------------------------------------------------------------------

    def _merge(self, batches: list[list[int]], parts: list[list[float]]) -> list[Score]:
        values: list[float] = [0.0] * sum(len(b) for b in batches)
        for positions, scores in zip(batches, parts, strict=True):
            for position, value in zip(positions, scores, strict=True):
                values[position] = value
        return [Score(value, self.score_kind) for value in values]

    def _run_all(
        self, fn: Callable[[list[int]], list[float]], batches: list[list[int]]
    ) -> list[list[float]]:
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
            raise _combine(failures)
        return [f.result() for f in futures]

    def _score_batch(self, query: str, docs: list[str], positions: list[int]) -> list[float]:
        try:
            return self._post(query, [docs[p] for p in positions], positions)
        except _Split as exc:
            split = exc  # resend outside the handler: later errors must not chain to it
        chunks = self._log_split(split, positions)
        return [v for c in chunks for v in self._score_batch(query, docs, c)]

    async def _ascore_batch(self, query: str, docs: list[str], positions: list[int]) -> list[float]:
        try:
            return await self._apost(query, [docs[p] for p in positions], positions)
        except _Split as exc:
            split = exc
        chunks = self._log_split(split, positions)
        parts = await _gather_all([self._ascore_batch(query, docs, c) for c in chunks])
        return [v for part in parts for v in part]

    def _log_split(self, split: _Split, positions: list[int]) -> list[list[int]]:
        chunks = _chunks(positions, split.size)
        logger.info(
            "%s; resending %d documents in %d requests", split.error, len(positions), len(chunks)
        )
        return chunks

    # -- one request, with retries ------------------------------------------------------

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        return {**self._extra_body, **self._dialect.body(query, documents, self._options)}

    def _post(self, query: str, documents: list[str], positions: list[int]) -> list[float]:
        body = self._body(query, documents)
        client = self._sync_client()
        timeout = self._request_timeout(client)
        retry = 0
        step: list[float] | _Retry
        while True:
            try:
                with self._slots:
                    response = client.post(
                        self._url,
                        json=body,
                        headers=self._headers,
                        auth=self._auth,
                        timeout=timeout,
                    )
            except httpx.TransportError as exc:
                step = self._after_transport_error(exc, retry, positions)
            else:
                step = self._after_response(response, retry, positions)
            if not isinstance(step, _Retry):
                return step
            logger.info("%s: %s; retry %d in %.2fs", self.url, step.error, retry + 1, step.delay)
            self.retry.sleep(step.delay)
            retry += 1

    async def _apost(self, query: str, documents: list[str], positions: list[int]) -> list[float]:
        body = self._body(query, documents)
        client = self._async_http_client()
        slots = self._async_semaphore()
        timeout = self._request_timeout(client)
        retry = 0
        step: list[float] | _Retry
        while True:
            try:
                async with slots:
                    response = await client.post(
                        self._url,
                        json=body,
                        headers=self._headers,
                        auth=self._auth,
                        timeout=timeout,
                    )
            except httpx.TransportError as exc:
                step = self._after_transport_error(exc, retry, positions)
            else:
                step = self._after_response(response, retry, positions)
            if not isinstance(step, _Retry):
                return step
            logger.info("%s: %s; retry %d in %.2fs", self.url, step.error, retry + 1, step.delay)
            await self.retry.asleep(step.delay)
            retry += 1

    def _after_transport_error(
        self, exc: httpx.TransportError, retry: int, positions: list[int]
    ) -> _Retry:
        timed_out = isinstance(exc, httpx.TimeoutException)
        cls = EndpointTimeoutError if timed_out else EndpointConnectionError
        what = "timed out" if timed_out else "could not be reached"
        detail = f"{type(exc).__name__}: {self._scrub(str(exc))}".rstrip(": ")
        error = cls(
            f"{self.dialect} endpoint {self.url} {what} for {_describe(positions)} ({detail})",
            indices=positions,
        )
        if not is_retryable_transport_error(exc):
            raise error from exc
        if retry >= self.retry.max_retries:
            raise cls(f"{error} after {retry + 1} attempts", indices=positions) from exc
        return _Retry(self.retry.delay(retry), error)

    def _after_response(
        self, response: httpx.Response, retry: int, positions: list[int]
    ) -> list[float] | _Retry:
        status = response.status_code
        if 200 <= status < 300:
            return self._parse(response, positions)
        excerpt = self._excerpt(response)
        message = (
            f"{self.dialect} endpoint {self.url} answered {status} "
            f"{response.reason_phrase} for {_describe(positions)}: {excerpt}"
        )
        if is_retryable_status(status):
            error = EndpointStatusError(
                message, status_code=status, body=excerpt, indices=positions
            )
            wait_for = parse_retry_after(response.headers.get("Retry-After"))
            if retry >= self.retry.max_retries:
                raise EndpointStatusError(
                    f"{message} (after {retry + 1} attempts)",
                    status_code=status,
                    body=excerpt,
                    indices=positions,
                )
            if wait_for is not None and wait_for > self.retry.max_retry_after:
                raise EndpointStatusError(
                    f"{message} (the server asked to retry after {wait_for:.0f}s, more "
                    f"than max_retry_after={self.retry.max_retry_after:g}s)",
                    status_code=status,
                    body=excerpt,
                    indices=positions,
                )
            return _Retry(self.retry.delay(retry, wait_for), error)
        text = response.text
        if status in (400, 413, 422) and says_too_long(text):
            advice = (
                "; vLLM truncates with extra_body={'truncate_prompt_tokens': -1}"
                if self.dialect == "cohere"
                else ""
            )
            error = EndpointInputTooLongError(
                f"{message} (the server refused over-length input; "
                f"overflow={self.overflow!r}{advice})",
                status_code=status,
                body=excerpt,
                indices=positions,
            )
            if 1 < len(positions) <= _ISOLATE_LIMIT:
                raise _Split((len(positions) + 1) // 2, error)  # find which documents
            raise error
        if says_too_many_documents(status, text) and len(positions) > 1:
            hint = batch_limit_hint(text)
            size = hint if hint is not None and hint < len(positions) else len(positions) // 2
            error = EndpointStatusError(
                message, status_code=status, body=excerpt, indices=positions
            )
            raise _Split(size, error)
        raise EndpointStatusError(message, status_code=status, body=excerpt, indices=positions)

    def _parse(self, response: httpx.Response, positions: list[int]) -> list[float]:
        try:
            payload = json.loads(response.content)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise MalformedResponseError(
                f"{self.dialect} endpoint {self.url} answered {response.status_code} with a "
                f"body that is not JSON for {_describe(positions)}: {self._excerpt(response)}",
                indices=positions,
            ) from exc
        values = self._dialect.parse(payload, positions)
        check_kind(values, positions, self.score_kind, self.dialect)
        return values

    # -- clients ------------------------------------------------------------------------

    def _request_timeout(self, client: httpx.Client | httpx.AsyncClient) -> Any:
        if self._timeout is not None:
            return self._timeout
        if client is self._owned_client or client is self._owned_async:
            return DEFAULT_TIMEOUT
        if client.timeout.read is None:  # a client passed in without a read timeout
            return DEFAULT_TIMEOUT
        return httpx.USE_CLIENT_DEFAULT

    def _limits(self) -> httpx.Limits:
        return httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )

    def _sync_client(self) -> httpx.Client:
        if self._client is not None:
            return self._client
        with self._lock:
            if self._owned_client is None:
                self._owned_client = httpx.Client(
                    timeout=self._timeout or DEFAULT_TIMEOUT, limits=self._limits()
                )
            return self._owned_client

    def _async_http_client(self) -> httpx.AsyncClient:
        if self._async_client is not None:
            return self._async_client
        loop = asyncio.get_running_loop()
        owner = self._owned_async_loop() if self._owned_async_loop is not None else None
        if self._owned_async is None or owner is not loop:
            # An AsyncClient's connections belong to one event loop: one client per loop.
            self._owned_async = httpx.AsyncClient(
                timeout=self._timeout or DEFAULT_TIMEOUT, limits=self._limits()
            )
            self._owned_async_loop = weakref.ref(loop)
        return self._owned_async

    def _async_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slots = self._async_slots.get(loop)
        if slots is None:
            slots = self._async_slots[loop] = asyncio.Semaphore(self.max_concurrency)
        return slots

    # -- messages -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    def _excerpt(self, response: httpx.Response) -> str:
        try:
            text = response.text
        except (UnicodeDecodeError, LookupError):
            text = repr(response.content[:_EXCERPT_CHARS])
        text = " ".join(text.split())
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS] + "..."
        return self._scrub(text) or "(empty body)"


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")


def _resolve_key(api_key: str | SecretStr | None, env: str | None) -> SecretStr | None:
    if api_key is None and env:
        api_key = os.environ.get(env)
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is None or not api_key.strip():
        return None
    return SecretStr(api_key.strip())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _chunks(positions: list[int], size: int) -> list[list[int]]:
    return [positions[i : i + size] for i in range(0, len(positions), size)]


def _describe(positions: Sequence[int]) -> str:
    """``documents 0-31`` / ``documents 3, 7, 9`` / ``document 4``.

    >>> _describe([0, 1, 2, 3, 7])
    'documents 0-3, 7'
    """
    if len(positions) == 1:
        return f"document {positions[0]}"
    spans: list[str] = []
    ordered = sorted(positions)
    start = prev = ordered[0]
    for p in [*ordered[1:], None]:
        if p is not None and p == prev + 1:
            prev = p
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if p is not None:
            start = prev = p
    shown = ", ".join(spans[:8])
    more = f", ... ({len(spans) - 8} more ranges)" if len(spans) > 8 else ""
    return f"documents {shown}{more}"


def _combine(failures: list[BaseException]) -> BaseException:
    """One error for several failed batches: every affected document in ``indices``."""
    endpoint = [e for e in failures if isinstance(e, EndpointError)]
    if len(endpoint) != len(failures):
        return next(e for e in failures if not isinstance(e, EndpointError))  # a bug: as is
    if len(endpoint) == 1:
        return endpoint[0]
    indices = sorted({i for e in endpoint for i in e.indices})
    first = endpoint[0]
    message = f"{len(endpoint)} requests failed for {_describe(indices)}; first: {first}"
    error: EndpointError
    if all(type(e) is type(first) for e in endpoint):
        if isinstance(first, EndpointStatusError):
            error = type(first)(
                message, status_code=first.status_code, body=first.body, indices=indices
            )
        else:
            error = type(first)(message, indices=indices)
    else:
        error = EndpointError(message, indices=indices)
    error.__cause__ = first
    return error


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
        raise _combine(failures)
    return [t.result() for t in tasks]
