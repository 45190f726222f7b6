"""``RemoteScorer``: the scoring protocol over a rerank HTTP endpoint, sync and async."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import math
import os
import ssl
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
    ResponseTooLargeError,
)
from rerank_plugins.identity import redact_url
from rerank_plugins.remote import redaction
from rerank_plugins.remote.dialects import (
    DialectName,
    RequestOptions,
    check_kind,
    endpoint_url,
    get_dialect,
    redact,
)
from rerank_plugins.remote.limits import (
    BodyTooLarge,
    BodyUndecodable,
    BoundedBody,
    Deadline,
    default_response_cap,
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
from rerank_plugins.scoring import (
    OverflowPolicy,
    Score,
    ScoreKind,
    check_inputs,
)
from rerank_plugins.wire import API_KEY_ENV, TOKENS_HEADER, TRUNCATED_HEADER

__all__ = ["API_KEY_ENV", "DEFAULT_DEADLINE", "DEFAULT_TIMEOUT", "RemoteScorer"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=300.0)
"""Generous read timeout: a CPU server can take minutes for a batch of long documents.
The pool timeout covers waiting behind the other requests of a large call."""

DEFAULT_DEADLINE = 900.0
"""Seconds one ``score``/``ascore`` call may take in all, retries and waits included: a
server that drips bytes or keeps answering 503 cannot hold a call for longer."""


_EXCERPT_CHARS = 300
_ISOLATE_LIMIT = 32  # split a length-refused batch to name its documents up to this size
_FORBIDDEN_EXTRA = frozenset({"top_n", "top_k"})
_USER_AGENT = "rerank-plugins/0.1.0"
# Headers whose values are credentials: kept out of logs like the API key.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-auth-token"}
)
# Headers of the raw response that describe its encoding, not the decoded body we keep.
_ENCODING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})

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
    - ``timeout``: seconds or an ``httpx.Timeout`` (default :data:`DEFAULT_TIMEOUT`),
      per request (the read timeout bounds the whole body, so a dripping answer is a
      timed-out, retried attempt); ``deadline``: seconds for the whole call, retries
      included (default
      :data:`DEFAULT_DEADLINE`; :class:`EndpointTimeoutError` past it).
    - ``max_response_bytes``: the largest (decoded) answer accepted; default: sized from
      each request (1 MiB + twice the request + 512 bytes per document). Larger bodies,
      endless ones and decompression bombs raise :class:`ResponseTooLargeError` after
      reading at most that much.
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
        _check_positive_number("deadline", deadline)
        if max_response_bytes is not None:
            _check_positive("max_response_bytes", max_response_bytes)
        extra = dict(extra_body or {})
        try:  # NaN, infinities and non-JSON values fail here, not on the first call
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidInputError(f"extra_body is not plain JSON: {exc}") from exc
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
        self.deadline = float(deadline)
        self.max_response_bytes = max_response_bytes
        self._headers = {
            "User-Agent": _USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",  # decoded here, with a bound on the output
            "Content-Type": "application/json",
        }
        self._headers.update(headers or {})
        _check_header_values(self._headers)
        self._auth: httpx.Auth | Any = httpx.USE_CLIENT_DEFAULT
        secrets = [v for k, v in self._headers.items() if k.lower() in _SECRET_HEADERS]
        if self._url.username or self._url.password:
            if self._api_key is not None:
                raise InvalidInputError(
                    f"{self.url} carries credentials and an API key is set (argument or "
                    f"${api_key_env}); give one or the other"
                )
            # Moved into an auth header: a URL with userinfo ends up in httpx's logs.
            username, password = self._url.username, self._url.password
            self._auth = httpx.BasicAuth(username, password)
            self._url = self._url.copy_with(userinfo=b"")
            secrets += [password, f"{username}:{password}"]
        secrets += [v for _, v in self._url.params.multi_items()]
        if self._url.query:
            secrets.append(self._url.query.decode("ascii", "replace"))
        if self._api_key is not None:
            secrets.append(self._api_key.get_secret_value())
            self._auth = _BearerAuth(self._api_key)
            if self._url.scheme == "http" and not _is_loopback(self._url.host):
                logger.warning(
                    "sending an API key over unencrypted http to %s; use https", self._url.host
                )
        self._timeout = _check_timeout(timeout)
        self._client = client
        self._async_client = async_client
        self._owned = _Owned()
        self._owned_async_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._async_slots: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, asyncio.Semaphore
        ] = weakref.WeakKeyDictionary()
        registered = redaction.register(secrets)
        # SecretStr: the values stay out of vars(scorer) and its reprs.
        self._secrets = tuple(SecretStr(v) for v in sorted(registered, key=len, reverse=True))
        # Sockets of a scorer dropped without close() are released when it is collected,
        # not whenever the clients themselves happen to be.
        self._finalizer = weakref.finalize(self, _release, self._owned, registered)

    # -- public API ---------------------------------------------------------------------

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        """One score per document, in input order (blocking)."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        deadline = Deadline(self.deadline)
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = self._run_all(
            lambda positions: self._score_batch(query, docs, positions, deadline), batches
        )
        return self._merge(batches, parts)

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        """One score per document, in input order (native async, ``httpx.AsyncClient``)."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        deadline = Deadline(self.deadline)
        batches = _chunks(list(range(len(docs))), self.max_batch_size)
        parts = await _gather_all(
            [self._ascore_batch(query, docs, positions, deadline) for positions in batches]
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
        credentials or query, the dialect, the model name, what is asked for (see
        :mod:`rerank_plugins.identity`). ``extra_body`` counts by its hash only."""
        extra = json.dumps(self._extra_body, sort_keys=True).encode()
        return {
            "kind": "RemoteScorer",
            "url": redact_url(self.url),  # no user name either
            "dialect": self.dialect,
            "model": self.model,
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

    # -- batches ------------------------------------------------------------------------

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
            raise _combine(failures)
        return [f.result() for f in futures]

    def _score_batch(
        self, query: str, docs: list[str], positions: list[int], deadline: Deadline
    ) -> list[Score]:
        try:
            return self._post(query, [docs[p] for p in positions], positions, deadline)
        except _Split as exc:
            split = exc  # resend outside the handler: later errors must not chain to it
        chunks = self._log_split(split, positions)
        return [v for c in chunks for v in self._score_batch(query, docs, c, deadline)]

    async def _ascore_batch(
        self, query: str, docs: list[str], positions: list[int], deadline: Deadline
    ) -> list[Score]:
        try:
            return await self._apost(query, [docs[p] for p in positions], positions, deadline)
        except _Split as exc:
            split = exc
        chunks = self._log_split(split, positions)
        parts = await _gather_all([self._ascore_batch(query, docs, c, deadline) for c in chunks])
        return [v for part in parts for v in part]

    def _log_split(self, split: _Split, positions: list[int]) -> list[list[int]]:
        chunks = _chunks(positions, split.size)
        logger.info(
            "%s; resending %d documents in %d requests", split.error, len(positions), len(chunks)
        )
        return chunks

    # -- one request, with retries ------------------------------------------------------

    def _body(self, query: str, documents: list[str]) -> bytes:
        body = {**self._extra_body, **self._dialect.body(query, documents, self._options)}
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")

    def _cap(self, content: bytes, n_documents: int) -> int:
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return default_response_cap(len(content), n_documents)

    def _post(
        self, query: str, documents: list[str], positions: list[int], deadline: Deadline
    ) -> list[Score]:
        content = self._body(query, documents)
        cap = self._cap(content, len(documents))
        client = self._sync_client()
        retry = 0
        step: list[Score] | _Retry
        while True:
            self._check_deadline(deadline, positions, retry)
            timeout = self._attempt_timeout(client, deadline)
            try:
                with self._slots:
                    response = self._send(client, content, timeout, cap, deadline, positions)
            except httpx.TransportError as exc:
                step = self._after_transport_error(exc, retry, positions)
            else:
                step = self._after_response(response, retry, positions)
            if not isinstance(step, _Retry):
                return step
            self._before_retry(step, retry, deadline, positions)
            self.retry.sleep(step.delay)
            retry += 1

    async def _apost(
        self, query: str, documents: list[str], positions: list[int], deadline: Deadline
    ) -> list[Score]:
        content = self._body(query, documents)
        cap = self._cap(content, len(documents))
        client = self._async_http_client()
        slots = self._async_semaphore()
        retry = 0
        step: list[Score] | _Retry
        while True:
            self._check_deadline(deadline, positions, retry)
            timeout = self._attempt_timeout(client, deadline)
            try:
                async with slots:
                    # Like the sync path: every phase's timeout is capped at what is left of
                    # the deadline and the body loop checks it per chunk (no wait_for task:
                    # it costs ~30 µs per request).
                    response = await self._asend(client, content, timeout, cap, deadline, positions)
            except httpx.TransportError as exc:
                step = self._after_transport_error(exc, retry, positions)
            else:
                step = self._after_response(response, retry, positions)
            if not isinstance(step, _Retry):
                return step
            self._before_retry(step, retry, deadline, positions)
            await self.retry.asleep(step.delay)
            retry += 1

    def _send(
        self,
        client: httpx.Client,
        content: bytes,
        timeout: httpx.Timeout,
        cap: int,
        deadline: Deadline,
        positions: list[int],
    ) -> httpx.Response:
        """POST and read the raw body under ``cap`` and the deadline; returns a response
        holding the decoded body."""
        request = client.build_request(
            "POST", self._url, content=content, headers=self._headers, timeout=timeout
        )
        response = client.send(request, auth=self._auth, stream=True)
        try:
            reader = self._reader(response, cap, positions)
            body_deadline = _body_deadline(timeout)
            in_memory = response.is_stream_consumed  # MockTransport: read and decoded
            if in_memory:
                self._feed(reader, response.content, deadline, body_deadline, positions)
            else:
                for chunk in response.iter_raw():
                    self._feed(reader, chunk, deadline, body_deadline, positions)
            return self._decoded(response, reader, positions, in_memory)
        finally:
            response.close()

    async def _asend(
        self,
        client: httpx.AsyncClient,
        content: bytes,
        timeout: httpx.Timeout,
        cap: int,
        deadline: Deadline,
        positions: list[int],
    ) -> httpx.Response:
        request = client.build_request(
            "POST", self._url, content=content, headers=self._headers, timeout=timeout
        )
        response = await client.send(request, auth=self._auth, stream=True)
        try:
            reader = self._reader(response, cap, positions)
            body_deadline = _body_deadline(timeout)
            in_memory = response.is_stream_consumed
            if in_memory:
                self._feed(reader, response.content, deadline, body_deadline, positions)
            else:
                async for chunk in response.aiter_raw():
                    self._feed(reader, chunk, deadline, body_deadline, positions)
            return self._decoded(response, reader, positions, in_memory)
        finally:
            await response.aclose()

    def _reader(self, response: httpx.Response, cap: int, positions: list[int]) -> BoundedBody:
        if response.is_stream_consumed:
            encoding = None  # in memory, already decoded by httpx (MockTransport)
        else:
            encoding = response.headers.get("content-encoding")
        try:
            if encoding is None:
                BoundedBody.check_declared(response.headers.get("content-length"), cap)
            return BoundedBody(encoding, cap)
        except BodyTooLarge as exc:
            raise self._too_large(response, exc, positions) from None
        except BodyUndecodable as exc:
            raise self._undecodable(response, exc, positions) from None

    def _feed(
        self,
        reader: BoundedBody,
        chunk: bytes,
        deadline: Deadline,
        body_deadline: Deadline | None,
        positions: list[int],
    ) -> None:
        if deadline.expired():  # a server dripping bytes: each read is quick, the sum is not
            raise self._deadline_error(deadline, positions, None)
        if body_deadline is not None and body_deadline.expired():
            # The read timeout bounds the whole body, not each read: a dripping answer is a
            # timed-out attempt, retried like one (within the call's deadline).
            raise httpx.ReadTimeout(
                f"the body took longer than the read timeout ({body_deadline.seconds:g}s)"
            )
        try:
            reader.feed(chunk)
        except BodyTooLarge as exc:
            raise self._too_large(None, exc, positions) from None
        except BodyUndecodable as exc:
            raise self._undecodable(None, exc, positions) from None

    def _decoded(
        self, response: httpx.Response, reader: BoundedBody, positions: list[int], in_memory: bool
    ) -> httpx.Response:
        try:
            body = reader.finish()
        except BodyTooLarge as exc:
            raise self._too_large(response, exc, positions) from None
        except BodyUndecodable as exc:
            raise self._undecodable(response, exc, positions) from None
        if in_memory:
            return response  # already decoded by httpx: nothing to rebuild
        headers = [
            (k, v) for k, v in response.headers.multi_items() if k.lower() not in _ENCODING_HEADERS
        ]
        extensions = {}
        if "reason_phrase" in response.extensions:
            extensions["reason_phrase"] = response.extensions["reason_phrase"]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=body,
            request=response.request,
            extensions=extensions,
        )

    def _too_large(
        self, response: httpx.Response | None, exc: BodyTooLarge, positions: list[int]
    ) -> ResponseTooLargeError:
        declared = f" (Content-Length {exc.declared})" if exc.declared is not None else ""
        return ResponseTooLargeError(
            f"{self.dialect} endpoint {self.url} sent a body larger than "
            f"max_response_bytes={exc.cap}{declared} for {_describe(positions)}; "
            "reading stopped there",
            indices=positions,
        )

    def _undecodable(
        self, response: httpx.Response | None, exc: BodyUndecodable, positions: list[int]
    ) -> MalformedResponseError:
        return MalformedResponseError(
            f"{self.dialect} endpoint {self.url} sent a body that cannot be decoded for "
            f"{_describe(positions)}: {exc}",
            indices=positions,
        )

    def _deadline_error(
        self, deadline: Deadline, positions: list[int], retry: int | None
    ) -> EndpointTimeoutError:
        attempts = "" if retry is None else f" after {retry + 1} attempt(s)"
        return EndpointTimeoutError(
            f"{self.dialect} endpoint {self.url} did not answer for {_describe(positions)} "
            f"within the call's deadline of {deadline.seconds:g}s{attempts}",
            indices=positions,
        )

    def _check_deadline(self, deadline: Deadline, positions: list[int], retry: int) -> None:
        if deadline.expired():
            raise self._deadline_error(deadline, positions, retry - 1 if retry else None)

    def _before_retry(
        self, step: _Retry, retry: int, deadline: Deadline, positions: list[int]
    ) -> None:
        if step.delay >= deadline.remaining():
            # Waiting would end past the deadline: fail now, with the last error as cause.
            error = self._deadline_error(deadline, positions, retry)
            raise EndpointTimeoutError(f"{error}; last: {step.error}", indices=positions) from (
                step.error
            )
        logger.info("%s: %s; retry %d in %.2fs", self.url, step.error, retry + 1, step.delay)

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
        if not is_retryable_transport_error(exc) or _is_tls_error(exc):
            # A certificate that failed verification fails the same way next time.
            raise error from exc
        if retry >= self.retry.max_retries:
            raise cls(f"{error} after {retry + 1} attempts", indices=positions) from exc
        return _Retry(self.retry.delay(retry), error)

    def _after_response(
        self, response: httpx.Response, retry: int, positions: list[int]
    ) -> list[Score] | _Retry:
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

    def _parse(self, response: httpx.Response, positions: list[int]) -> list[Score]:
        try:
            payload = json.loads(response.content)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; nesting too deep
            raise MalformedResponseError(
                f"{self.dialect} endpoint {self.url} answered {response.status_code} with a "
                f"body that is not JSON for {_describe(positions)}: {self._excerpt(response)}",
                indices=positions,
            ) from exc
        try:
            values = self._dialect.parse(payload, positions)
        except (OverflowError, TypeError, ValueError, RecursionError) as exc:
            if isinstance(exc, EndpointError):
                raise
            # e.g. a 400-digit integer score: float() of it overflows
            raise MalformedResponseError(
                f"{self.dialect} endpoint {self.url} answered with unusable scores for "
                f"{_describe(positions)}: {type(exc).__name__}: {exc}"[:1000],
                indices=positions,
            ) from exc
        check_kind(values, positions, self.score_kind, self.dialect)
        cut, tokens = self._truncation_report(response, len(values))
        kind = self.score_kind
        return [
            Score(value, kind, tokens=tokens[i] if tokens else None, truncated=i in cut)
            for i, value in enumerate(values)
        ]

    def _truncation_report(
        self, response: httpx.Response, n: int
    ) -> tuple[frozenset[int], list[int] | None]:
        """What a server says it cut, from headers any dialect's answer can carry.

        ``X-Truncated-Documents: 0,3`` (indices in this request) and
        ``X-Document-Tokens: 12,64,...`` (tokens scored per document, in request order),
        as ``rerank-plugins serve`` sends them. Other servers send neither: no document
        is flagged and tokens stay ``None``. A malformed report is ignored with a warning
        rather than failing scores that are themselves fine.
        """
        cut_header = response.headers.get(TRUNCATED_HEADER)
        tokens_header = response.headers.get(TOKENS_HEADER)
        cut: frozenset[int] = frozenset()
        tokens: list[int] | None = None
        try:
            if cut_header:
                cut = frozenset(int(i) for i in cut_header.split(","))
                if any(not 0 <= i < n for i in cut):
                    raise ValueError(f"an index outside 0..{n - 1}")
            if tokens_header:
                tokens = [int(t) for t in tokens_header.split(",")]
                if len(tokens) != n or any(t < 0 for t in tokens):
                    raise ValueError(f"not {n} non-negative counts")
        except ValueError as exc:
            logger.warning("%s: ignoring a malformed truncation report: %s", self.url, exc)
            return frozenset(), None
        return cut, tokens

    # -- clients ------------------------------------------------------------------------

    def _request_timeout(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Timeout:
        if self._timeout is not None:
            return self._timeout
        if client is self._owned.client or client is self._owned.async_client:
            return DEFAULT_TIMEOUT
        if client.timeout.read is None:  # a client passed in without a read timeout
            return DEFAULT_TIMEOUT
        return client.timeout

    def _attempt_timeout(
        self, client: httpx.Client | httpx.AsyncClient, deadline: Deadline
    ) -> httpx.Timeout:
        t = self._request_timeout(client)
        connect, read, write, pool = deadline.cap([t.connect, t.read, t.write, t.pool])
        return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)

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
                    timeout=self._timeout or DEFAULT_TIMEOUT, limits=self._limits()
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
                timeout=self._timeout or DEFAULT_TIMEOUT, limits=self._limits()
            )
            self._owned_async_loop = weakref.ref(loop)
        return self._owned.async_client

    def _async_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slots = self._async_slots.get(loop)
        if slots is None:
            slots = self._async_slots[loop] = asyncio.Semaphore(self.max_concurrency)
        return slots

    # -- messages -----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret.get_secret_value(), "***")
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


def _body_deadline(timeout: httpx.Timeout) -> Deadline | None:
    read = timeout.read
    return None if read is None or read == math.inf else Deadline(read)


def _check_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InvalidInputError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_timeout(timeout: object) -> httpx.Timeout | None:
    """A positive finite number or an ``httpx.Timeout`` whose parts are (or are ``None``)."""
    if timeout is None:
        return None
    if isinstance(timeout, httpx.Timeout):
        for part, value in timeout.as_dict().items():
            if value is not None:
                _check_positive_number(f"timeout.{part}", value)
        return timeout
    _check_positive_number("timeout", timeout)
    return httpx.Timeout(float(timeout))  # type: ignore[arg-type]


def _check_header_values(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(value, str) or not _is_header_safe(value):
            raise InvalidInputError(
                f"header {name!r} must be printable ASCII without control characters"
            )


def _is_header_safe(value: str) -> bool:
    return all(" " <= c <= "~" for c in value)


def _is_tls_error(exc: BaseException) -> bool:
    """Whether a transport error comes from TLS (certificate verification, handshake)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError | ssl.CertificateError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


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
    key = api_key.strip()
    if not all("!" <= c <= "~" for c in key):
        # A NUL or newline would be quoted back (as a bytes repr) in transport errors,
        # past any scrubbing, and cannot be a valid Bearer token anyway.
        raise InvalidInputError(
            "the API key must be printable ASCII without spaces or control characters"
        )
    return SecretStr(key)


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
