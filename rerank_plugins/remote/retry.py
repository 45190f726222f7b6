"""When to retry a rerank request, how long to wait, and when to split a batch instead."""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx

__all__ = [
    "RETRYABLE_STATUS",
    "RetryPolicy",
    "batch_limit_hint",
    "is_retryable_status",
    "is_retryable_transport_error",
    "parse_retry_after",
    "says_too_long",
    "says_too_many_documents",
]

RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
"""Besides 5xx (not 501/505): timeout, conflict, too early, too many requests."""

_NOT_RETRYABLE_5XX = frozenset({501, 505})  # not implemented / HTTP version: permanent


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    Retry ``n`` (from 0) waits ``min(max_backoff, backoff * 2**n)`` seconds times a
    jitter factor drawn from ``[0.5, 1)``. A ``Retry-After`` answer is honoured instead
    when it is at most ``max_retry_after`` seconds; a longer one ends the retries (the
    error says how long the server asked for). ``max_retries`` counts retries, not
    attempts. ``sleep``/``asleep``/``rng`` are seams for tests.
    """

    max_retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 20.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    asleep: Callable[[float], Awaitable[None]] = field(
        default=asyncio.sleep, repr=False, compare=False
    )
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        >>> RetryPolicy(rng=lambda: 0.0).delay(2)
        1.0
        >>> RetryPolicy(rng=lambda: 0.0).delay(0, retry_after=3.0)
        3.0
        """
        if retry_after is not None:
            # A little spread so that callers told the same instant do not come back
            # together; never earlier than asked.
            return retry_after + min(1.0, 0.1 * retry_after) * self.rng()
        ceiling = min(self.max_backoff, self.backoff * (2.0**retry))
        return ceiling * (0.5 + 0.5 * self.rng())


def is_retryable_status(status: int) -> bool:
    """408/409/425/429 and 5xx other than 501 and 505.

    >>> [s for s in (400, 404, 408, 413, 429, 500, 501, 503) if is_retryable_status(s)]
    [408, 429, 500, 503]
    """
    if status in RETRYABLE_STATUS:
        return True
    return 500 <= status <= 599 and status not in _NOT_RETRYABLE_5XX


def is_retryable_transport_error(exc: httpx.TransportError) -> bool:
    """Timeouts, network errors, a server that closed the connection, proxy errors.

    Not: an unsupported URL scheme or a request httpx itself could not form.
    """
    return isinstance(
        exc,
        (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError),
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``.

    >>> parse_retry_after("2")
    2.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT",
    ...                   now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc))
    5.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds or seconds == float("inf"):  # NaN or inf
        return None
    return max(0.0, seconds)


_TOO_MANY = re.compile(
    r"too many (documents|texts|passages|inputs|items)|batch.?size|at most \d+ items"
    r"|max(imum)?[ _-]?(client[ _-]?)?batch|exceeds? the max(imum)? number",
    re.IGNORECASE,
)
_LIMIT = re.compile(
    r"(?:maximum allowed batch size|max(?:imum)?[ _-]?(?:client[ _-]?)?batch[ _-]?size"
    r"(?: is| of|:)?|at most|cannot exceed|must not exceed)\s*(\d+)",
    re.IGNORECASE,
)
_TOO_LONG = re.compile(
    r"too long|context length|max_model_len|input length|token limit"
    r"|(exceed|maximum|limit|longer|less than|at most|more than).{0,40}\btokens?\b"
    r"|\btokens?\b.{0,40}(exceed|limit|maximum|longer)",
    re.IGNORECASE,
)


def says_too_many_documents(status: int, body: str) -> bool:
    """Whether an error answer means "fewer documents per request, please".

    413 always qualifies (TEI answers 413 for a batch over its limit; a body over a
    proxy's size limit is the same problem). 400/422 qualify when the text says so.

    >>> says_too_many_documents(422, "List should have at most 2048 items")
    True
    >>> says_too_many_documents(400, "invalid model")
    False
    """
    if status == 413:
        return True
    return status in (400, 422) and _TOO_MANY.search(body) is not None


def batch_limit_hint(body: str) -> int | None:
    """The per-request document limit an error text states, if any.

    >>> batch_limit_hint("batch size 40 > maximum allowed batch size 32")
    32
    >>> batch_limit_hint("List should have at most 2048 items after validation")
    2048
    >>> batch_limit_hint("payload too large") is None
    True
    """
    match = _LIMIT.search(body)
    if match is None:
        return None
    limit = int(match.group(1))
    return limit if limit > 0 else None


def says_too_long(body: str) -> bool:
    """Whether an error text is about input length (tokens), not document count.

    >>> says_too_long("Input validation error: `inputs` must have less than 512 tokens")
    True
    >>> says_too_long("batch size 40 > maximum allowed batch size 32")
    False
    """
    return _TOO_LONG.search(body) is not None
