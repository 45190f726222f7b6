"""What an attempt's result means: scores, a retry after a wait, or a split batch.

Pure decisions, no I/O: the transport hands in an answer already read into memory (or
the transport error it got) and gets back one of

- ``list[Score]``: the batch is scored, in request order;
- :class:`Retry`: wait ``delay`` seconds and send the same request again;
- :class:`Split`: resend the batch in chunks of ``size`` documents (the server refused
  the batch's size, or one of its documents is too long and the split finds which);

or an :class:`~rerank_plugins.errors.EndpointError` raised for a final failure, naming
the documents of the batch.
"""

from __future__ import annotations

import errno
import json
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from rerank_plugins.errors import (
    EndpointConnectionError,
    EndpointError,
    EndpointInputTooLongError,
    EndpointStatusError,
    EndpointTimeoutError,
    MalformedResponseError,
    ResponseTooLargeError,
)
from rerank_plugins.remote.config import Endpoint, is_loopback
from rerank_plugins.remote.dialects import check_kind
from rerank_plugins.remote.limits import BodyTooLarge, BodyUndecodable, Deadline
from rerank_plugins.remote.retry import (
    batch_limit_hint,
    is_retryable_status,
    is_retryable_transport_error,
    parse_retry_after,
    says_too_long,
    says_too_many_documents,
)
from rerank_plugins.scoring import Score
from rerank_plugins.wire import TOKENS_HEADER, TRUNCATED_HEADER

__all__ = [
    "Retry",
    "Split",
    "after_response",
    "after_transport_error",
    "combine",
    "deadline_error",
    "describe",
    "is_connection_refused",
    "is_tls_error",
    "too_large",
    "undecodable",
]

logger = logging.getLogger(__name__)

_EXCERPT_CHARS = 300
_ISOLATE_LIMIT = 32  # split a length-refused batch to name its documents up to this size


@dataclass(frozen=True, slots=True)
class Retry:
    """Send the same request again after ``delay`` seconds; ``error`` is why."""

    delay: float
    error: EndpointError


@dataclass(frozen=True, slots=True)
class Split:
    """Resend this batch in chunks of ``size`` documents; ``error`` is why."""

    size: int
    error: EndpointError


def after_response(
    endpoint: Endpoint, response: httpx.Response, retry: int, positions: list[int]
) -> list[Score] | Retry | Split:
    """Classify an answer read into memory (``retry``: retries done so far)."""
    status = response.status_code
    if 200 <= status < 300:
        return parse_scores(endpoint, response, positions)
    excerpt = _excerpt(endpoint, response)
    message = (
        f"{endpoint.name} endpoint {endpoint.display_url} answered {status} "
        f"{response.reason_phrase} for {describe(positions)}: {excerpt}"
    )
    if is_retryable_status(status):
        return _retry_status(endpoint, response, retry, positions, message, excerpt)
    text = response.text
    if status in (400, 413, 422) and says_too_long(text):
        advice = (
            "; vLLM truncates with extra_body={'truncate_prompt_tokens': -1}"
            if endpoint.name == "cohere"
            else ""
        )
        error = EndpointInputTooLongError(
            f"{message} (the server refused over-length input; "
            f"overflow={endpoint.overflow!r}{advice})",
            status_code=status,
            body=excerpt,
            indices=positions,
        )
        if 1 < len(positions) <= _ISOLATE_LIMIT:
            return Split((len(positions) + 1) // 2, error)  # find which documents
        raise error
    if says_too_many_documents(status, text) and len(positions) > 1:
        hint = batch_limit_hint(text)
        size = hint if hint is not None and hint < len(positions) else len(positions) // 2
        return Split(
            size, EndpointStatusError(message, status_code=status, body=excerpt, indices=positions)
        )
    raise EndpointStatusError(message, status_code=status, body=excerpt, indices=positions)


def _retry_status(
    endpoint: Endpoint,
    response: httpx.Response,
    retry: int,
    positions: list[int],
    message: str,
    excerpt: str,
) -> Retry:
    status = response.status_code
    policy = endpoint.retry
    error = EndpointStatusError(message, status_code=status, body=excerpt, indices=positions)
    wait_for = parse_retry_after(response.headers.get("Retry-After"))
    if retry >= policy.max_retries:
        raise EndpointStatusError(
            f"{message} (after {retry + 1} attempts)",
            status_code=status,
            body=excerpt,
            indices=positions,
        )
    if wait_for is not None and wait_for > policy.max_retry_after:
        raise EndpointStatusError(
            f"{message} (the server asked to retry after {wait_for:.0f}s, more "
            f"than max_retry_after={policy.max_retry_after:g}s)",
            status_code=status,
            body=excerpt,
            indices=positions,
        )
    return Retry(policy.delay(retry, wait_for), error)


def after_transport_error(
    endpoint: Endpoint, exc: httpx.TransportError, retry: int, positions: list[int]
) -> Retry:
    """Classify a transport error: a :class:`Retry`, or raise the final error."""
    timed_out = isinstance(exc, httpx.TimeoutException)
    cls = EndpointTimeoutError if timed_out else EndpointConnectionError
    what = "timed out" if timed_out else "could not be reached"
    detail = f"{type(exc).__name__}: {endpoint.scrub(str(exc))}".rstrip(": ")
    error = cls(
        f"{endpoint.name} endpoint {endpoint.display_url} {what} for {describe(positions)} "
        f"({detail})",
        indices=positions,
    )
    if not is_retryable_transport_error(exc) or is_tls_error(exc):
        # A certificate that failed verification fails the same way next time.
        raise error from exc
    if is_loopback(endpoint.url.host) and is_connection_refused(exc):
        # Nothing listens on this machine's port: seconds of back-off will not change that
        # (a refusal from another host may be a server restarting behind a balancer).
        raise cls(
            f"{error}; nothing listens there (a refused loopback connection is not retried)",
            indices=positions,
        ) from exc
    if retry >= endpoint.retry.max_retries:
        raise cls(f"{error} after {retry + 1} attempts", indices=positions) from exc
    return Retry(endpoint.retry.delay(retry), error)


def parse_scores(endpoint: Endpoint, response: httpx.Response, positions: list[int]) -> list[Score]:
    """The scores of a 2xx answer, in request order, with the server's truncation report."""
    try:
        payload = json.loads(response.content)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; nesting too deep
        raise MalformedResponseError(
            f"{endpoint.name} endpoint {endpoint.display_url} answered {response.status_code} "
            f"with a body that is not JSON for {describe(positions)}: "
            f"{_excerpt(endpoint, response)}",
            indices=positions,
        ) from exc
    try:
        values = endpoint.dialect.parse(payload, positions)
    except (OverflowError, TypeError, ValueError, RecursionError) as exc:
        if isinstance(exc, EndpointError):
            raise
        # e.g. a 400-digit integer score: float() of it overflows
        raise MalformedResponseError(
            f"{endpoint.name} endpoint {endpoint.display_url} answered with unusable scores "
            f"for {describe(positions)}: {type(exc).__name__}: {exc}"[:1000],
            indices=positions,
        ) from exc
    check_kind(values, positions, endpoint.score_kind, endpoint.name)
    cut, tokens = truncation_report(endpoint, response, len(values))
    kind = endpoint.score_kind
    return [
        Score(value, kind, tokens=tokens[i] if tokens else None, truncated=i in cut)
        for i, value in enumerate(values)
    ]


def truncation_report(
    endpoint: Endpoint, response: httpx.Response, n: int
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
        logger.warning("%s: ignoring a malformed truncation report: %s", endpoint.display_url, exc)
        return frozenset(), None
    return cut, tokens


def too_large(endpoint: Endpoint, exc: BodyTooLarge, positions: list[int]) -> ResponseTooLargeError:
    declared = f" (Content-Length {exc.declared})" if exc.declared is not None else ""
    return ResponseTooLargeError(
        f"{endpoint.name} endpoint {endpoint.display_url} sent a body larger than "
        f"max_response_bytes={exc.cap}{declared} for {describe(positions)}; "
        "reading stopped there",
        indices=positions,
    )


def undecodable(
    endpoint: Endpoint, exc: BodyUndecodable, positions: list[int]
) -> MalformedResponseError:
    return MalformedResponseError(
        f"{endpoint.name} endpoint {endpoint.display_url} sent a body that cannot be decoded "
        f"for {describe(positions)}: {exc}",
        indices=positions,
    )


def deadline_error(
    endpoint: Endpoint, deadline: Deadline, positions: list[int], retry: int | None
) -> EndpointTimeoutError:
    """The call's deadline passed (``retry``: the last retry done, ``None`` if unknown)."""
    attempts = "" if retry is None else f" after {retry + 1} attempt(s)"
    return EndpointTimeoutError(
        f"{endpoint.name} endpoint {endpoint.display_url} did not answer for "
        f"{describe(positions)} within the call's deadline of {deadline.seconds:g}s{attempts}",
        indices=positions,
    )


def is_tls_error(exc: BaseException) -> bool:
    """Whether a transport error comes from TLS (certificate verification, handshake)."""
    return any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in _chain(exc)) or (
        "CERTIFICATE_VERIFY_FAILED" in str(exc)
    )


def is_connection_refused(exc: BaseException) -> bool:
    """Whether the peer refused the connection (``ECONNREFUSED``) somewhere in the chain.

    >>> try:
    ...     raise httpx.ConnectError("refused") from ConnectionRefusedError(111, "refused")
    ... except httpx.ConnectError as exc:
    ...     is_connection_refused(exc), is_connection_refused(httpx.ConnectError("reset"))
    (True, False)
    """
    return any(
        isinstance(e, ConnectionRefusedError)
        or (isinstance(e, OSError) and e.errno == errno.ECONNREFUSED)
        for e in _chain(exc)
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes and contexts, each once."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _excerpt(endpoint: Endpoint, response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = repr(response.content[:_EXCERPT_CHARS])
    text = " ".join(text.split())
    if len(text) > _EXCERPT_CHARS:
        text = text[:_EXCERPT_CHARS] + "..."
    return endpoint.scrub(text) or "(empty body)"


def describe(positions: Sequence[int]) -> str:
    """``documents 0-31`` / ``documents 3, 7, 9`` / ``document 4``.

    >>> describe([0, 1, 2, 3, 7])
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


def combine(failures: list[BaseException]) -> BaseException:
    """One error for several failed batches: every affected document in ``indices``."""
    endpoint = [e for e in failures if isinstance(e, EndpointError)]
    if len(endpoint) != len(failures):
        return next(e for e in failures if not isinstance(e, EndpointError))  # a bug: as is
    if len(endpoint) == 1:
        return endpoint[0]
    indices = sorted({i for e in endpoint for i in e.indices})
    first = endpoint[0]
    message = f"{len(endpoint)} requests failed for {describe(indices)}; first: {first}"
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
