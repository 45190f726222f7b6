"""Sending one batch: the POST, the bounded streamed read, and the retries.

Twins in httpx's ``Client``/``AsyncClient`` shape: :func:`post`/:func:`apost` (the retry
loop) and :func:`send`/:func:`asend` (one attempt) differ only in ``await``; every
decision they take is in :class:`Attempts` (deadline, per-attempt timeouts, what a result
means, how long to wait) and :class:`BodyReader` (the size cap, the body deadline, the
decoding), shared by both.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading

import httpx

from rerank_plugins.errors import EndpointTimeoutError
from rerank_plugins.remote.config import Endpoint
from rerank_plugins.remote.limits import BodyTooLarge, BodyUndecodable, BoundedBody, Deadline
from rerank_plugins.remote.outcome import (
    Retry,
    Split,
    after_response,
    after_transport_error,
    deadline_error,
    too_large,
    undecodable,
)
from rerank_plugins.scoring import Score

__all__ = ["Attempts", "BodyReader", "apost", "asend", "post", "send"]

logger = logging.getLogger(__name__)

# Headers of the raw response that describe its encoding, not the decoded body we keep.
_ENCODING_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


class Attempts:
    """The state and decisions of one batch's retry loop, sync or async.

    ``base_timeout`` is the per-request timeout; each attempt gets it capped at what is
    left of the call's ``deadline``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        content: bytes,
        positions: list[int],
        deadline: Deadline,
        base_timeout: httpx.Timeout,
    ) -> None:
        self.endpoint = endpoint
        self.content = content
        self.positions = positions
        self.deadline = deadline
        self.base_timeout = base_timeout
        self.cap = endpoint.cap(content, len(positions))
        self.retry = 0  # retries done so far

    def begin(self) -> httpx.Timeout:
        """The next attempt's timeout; raises if the call's deadline has passed."""
        if self.deadline.expired():
            last = self.retry - 1 if self.retry else None
            raise deadline_error(self.endpoint, self.deadline, self.positions, last)
        t = self.base_timeout
        connect, read, write, pool = self.deadline.cap([t.connect, t.read, t.write, t.pool])
        return httpx.Timeout(connect=connect, read=read, write=write, pool=pool)

    def after_response(self, response: httpx.Response) -> list[Score] | Retry | Split:
        return after_response(self.endpoint, response, self.retry, self.positions)

    def after_error(self, exc: httpx.TransportError) -> Retry:
        return after_transport_error(self.endpoint, exc, self.retry, self.positions)

    def wait(self, step: Retry) -> float:
        """Seconds to sleep before the retry ``step`` asks for; raises if the wait would
        end past the deadline."""
        if step.delay >= self.deadline.remaining():
            # Waiting would end past the deadline: fail now, with the last error as cause.
            error = deadline_error(self.endpoint, self.deadline, self.positions, self.retry)
            raise EndpointTimeoutError(
                f"{error}; last: {step.error}", indices=self.positions
            ) from (step.error)
        logger.info(
            "%s: %s; retry %d in %.2fs",
            self.endpoint.display_url,
            step.error,
            self.retry + 1,
            step.delay,
        )
        self.retry += 1
        return step.delay

    def request(
        self, client: httpx.Client | httpx.AsyncClient, timeout: httpx.Timeout
    ) -> httpx.Request:
        e = self.endpoint
        return client.build_request(
            "POST", e.url, content=self.content, headers=e.headers, timeout=timeout
        )


class BodyReader:
    """Reads one answer under the size cap, the call's deadline and the read timeout
    (which bounds the whole body: a dripping answer is a timed-out attempt)."""

    def __init__(
        self, attempts: Attempts, response: httpx.Response, timeout: httpx.Timeout
    ) -> None:
        self._attempts = attempts
        self._response = response
        # In memory (MockTransport): already read and decoded by httpx.
        self.in_memory = response.is_stream_consumed
        encoding = None if self.in_memory else response.headers.get("content-encoding")
        read = timeout.read
        self._body_deadline = None if read is None or read == math.inf else Deadline(read)
        try:
            if encoding is None:
                BoundedBody.check_declared(response.headers.get("content-length"), attempts.cap)
            self._body = BoundedBody(encoding, attempts.cap)
        except (BodyTooLarge, BodyUndecodable) as exc:
            raise self._error(exc) from None

    def feed(self, chunk: bytes) -> None:
        a = self._attempts
        if a.deadline.expired():  # a server dripping bytes: each read is quick, the sum is not
            raise deadline_error(a.endpoint, a.deadline, a.positions, None)
        if self._body_deadline is not None and self._body_deadline.expired():
            # The read timeout bounds the whole body, not each read: a dripping answer is a
            # timed-out attempt, retried like one (within the call's deadline).
            raise httpx.ReadTimeout(
                f"the body took longer than the read timeout ({self._body_deadline.seconds:g}s)"
            )
        try:
            self._body.feed(chunk)
        except (BodyTooLarge, BodyUndecodable) as exc:
            raise self._error(exc) from None

    def finish(self) -> httpx.Response:
        """A response holding the decoded body."""
        try:
            body = self._body.finish()
        except (BodyTooLarge, BodyUndecodable) as exc:
            raise self._error(exc) from None
        response = self._response
        if self.in_memory:
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

    def _error(self, exc: BodyTooLarge | BodyUndecodable) -> Exception:
        a = self._attempts
        if isinstance(exc, BodyTooLarge):
            return too_large(a.endpoint, exc, a.positions)
        return undecodable(a.endpoint, exc, a.positions)


def send(client: httpx.Client, attempts: Attempts, timeout: httpx.Timeout) -> httpx.Response:
    """One POST, its body read under the limits; returns a response holding the decoded body."""
    response = client.send(
        attempts.request(client, timeout), auth=attempts.endpoint.auth, stream=True
    )
    try:
        reader = BodyReader(attempts, response, timeout)
        if reader.in_memory:
            reader.feed(response.content)
        else:
            for chunk in response.iter_raw():
                reader.feed(chunk)
        return reader.finish()
    finally:
        response.close()


async def asend(
    client: httpx.AsyncClient, attempts: Attempts, timeout: httpx.Timeout
) -> httpx.Response:
    """:func:`send` on an ``AsyncClient``."""
    response = await client.send(
        attempts.request(client, timeout), auth=attempts.endpoint.auth, stream=True
    )
    try:
        reader = BodyReader(attempts, response, timeout)
        if reader.in_memory:
            reader.feed(response.content)
        else:
            async for chunk in response.aiter_raw():
                reader.feed(chunk)
        return reader.finish()
    finally:
        await response.aclose()


def post(
    client: httpx.Client, attempts: Attempts, slots: threading.BoundedSemaphore
) -> list[Score] | Split:
    """Send until scored, split, or failed for good (raised); ``slots`` bounds the
    requests in flight."""
    while True:
        timeout = attempts.begin()
        step: list[Score] | Retry | Split
        try:
            with slots:
                response = send(client, attempts, timeout)
        except httpx.TransportError as exc:
            step = attempts.after_error(exc)
        else:
            step = attempts.after_response(response)
        if not isinstance(step, Retry):
            return step
        attempts.endpoint.retry.sleep(attempts.wait(step))


async def apost(
    client: httpx.AsyncClient, attempts: Attempts, slots: asyncio.Semaphore
) -> list[Score] | Split:
    """:func:`post` on an ``AsyncClient``."""
    while True:
        # Like the sync path: every phase's timeout is capped at what is left of the
        # deadline and the body loop checks it per chunk (no wait_for task: it costs
        # ~30 µs per request).
        timeout = attempts.begin()
        step: list[Score] | Retry | Split
        try:
            async with slots:
                response = await asend(client, attempts, timeout)
        except httpx.TransportError as exc:
            step = attempts.after_error(exc)
        else:
            step = attempts.after_response(response)
        if not isinstance(step, Retry):
            return step
        await attempts.endpoint.retry.asleep(attempts.wait(step))
