"""What the endpoints share: the served scorer's strategy, batcher and metrics, and the one
path from a request's ``(query, documents)`` groups to their scores.

:func:`create_app` keeps one :class:`Service` in ``app.state.service``; endpoints get it
through the :func:`service` dependency.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel

from rerank_plugins.batching.batcher import MicroBatcher, RequestTooLargeError
from rerank_plugins.batching.strategy import Prepared, Strategy
from rerank_plugins.errors import InvalidInputError, InvalidScoreError
from rerank_plugins.scoring import Score, ascore_groups, check_inputs
from rerank_plugins.serve.handlers import ClientGone
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.wire import IGNORED_FIELDS_HEADER, TOKENS_HEADER, TRUNCATED_HEADER

__all__ = [
    "Outcome",
    "Service",
    "answer_headers",
    "ignored_fields",
    "request_id",
    "service",
    "truncation_headers",
]

_T = TypeVar("_T")

_MAX_TOKENS_HEADER = 8192
_MAX_IGNORED = 20
_PREPARE_SLICE = 32
_SPECIAL_TOKENS = 8
_UNPRINTABLE = re.compile(r"[^\x21-\x2b\x2d-\x7e]")


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's scores, one per document, in input order (groups one after another)."""

    scores: list[Score]

    @property
    def tokens(self) -> int:
        return sum(s.tokens or 0 for s in self.scores)

    @property
    def truncated(self) -> list[int]:
        return [i for i, s in enumerate(self.scores) if s.truncated]


@dataclass(eq=False)
class Service:
    """One served scorer: its name and window, how it is batched, what is measured."""

    name: str
    window: int | None
    created: int
    strategy: Strategy
    batcher: MicroBatcher[Any, Score]
    metrics: Metrics
    max_client_batch_size: int

    async def score(
        self,
        request: Request,
        groups: Sequence[tuple[str, Sequence[str]]],
        *,
        truncate: bool,
        max_document_tokens: int | None = None,
        raw: bool = False,
        instruction: str | None = None,
    ) -> Outcome:
        """Scores of a request's groups through the batcher (cancelled if the client goes)."""
        n = sum(len(documents) for _, documents in groups)
        request.state.documents = n
        if n > self.max_client_batch_size:
            raise RequestTooLargeError(
                f"batch size {n} > maximum allowed batch size {self.max_client_batch_size}"
            )
        submitter = _Submitter(
            self.strategy,
            self.batcher,
            self.metrics,
            truncate=truncate,
            max_document_tokens=max_document_tokens,
            raw=raw,
            window=self.window,
            instruction=instruction,
        )
        scored = await _until_disconnect(request, ascore_groups(submitter, groups, concurrent=True))
        outcome = Outcome([s for group in scored for s in group])
        bad = [i for i, s in enumerate(outcome.scores) if not math.isfinite(s.value)]
        if bad:
            # JSON has no NaN or inf, and a ranking by them means nothing.
            raise InvalidScoreError(
                f"the model returned non-finite scores (NaN or inf) for documents {bad}",
                indices=bad,
            )
        request.state.tokens = outcome.tokens
        self.metrics.observe_request(n, outcome.tokens, len(outcome.truncated))
        return outcome


def service(request: Request) -> Service:
    """The FastAPI dependency that hands an endpoint the app's :class:`Service`."""
    found: Service = request.app.state.service
    return found


def request_id(request: Request) -> str:
    """The request's id (``X-Request-Id`` as given, or a fresh one)."""
    return str(request.scope.get("rerank.request_id") or uuid.uuid4().hex)


def truncation_headers(outcome: Outcome) -> dict[str, str]:
    """The truncated flags and token counts, as headers every dialect's answer carries."""
    # Every dialect's answer carries them, so a RemoteScorer in any dialect gets the
    # same truncated flags and token counts as the local scorer (nothing silent).
    headers = {}
    if outcome.truncated:
        headers[TRUNCATED_HEADER] = ",".join(map(str, outcome.truncated))
    if outcome.scores and all(s.tokens is not None for s in outcome.scores):
        counts = ",".join(str(s.tokens) for s in outcome.scores)
        # Token counts are a nicety: left out rather than let a huge request's
        # headers pass clients' header size limits (h11: 16 KiB in all).
        if len(counts) <= _MAX_TOKENS_HEADER:
            headers[TOKENS_HEADER] = counts
    return headers


def ignored_fields(body: BaseModel) -> list[str]:
    """The request's top-level fields the server does not know (ignored, not refused),
    sorted, made printable (at most 20, 64 characters each)."""
    names = sorted(_UNPRINTABLE.sub("?", name)[:64] for name in body.model_extra or {})
    return names[:_MAX_IGNORED]


def answer_headers(outcome: Outcome, body: BaseModel) -> dict[str, str]:
    """The headers every dialect's answer carries: truncation, token counts, and the
    ignored fields (:data:`~rerank_plugins.wire.IGNORED_FIELDS_HEADER`)."""
    headers = truncation_headers(outcome)
    ignored = ignored_fields(body)
    if ignored:
        headers[IGNORED_FIELDS_HEADER] = ",".join(ignored)
    return headers


class _Submitter:
    """One request's way to the batcher, as the async scorer :func:`ascore_groups` calls."""

    def __init__(
        self,
        strategy: Strategy,
        batcher: MicroBatcher[Any, Score],
        metrics: Metrics,
        *,
        truncate: bool,
        max_document_tokens: int | None,
        raw: bool,
        window: int | None,
        instruction: str | None = None,
    ) -> None:
        self.strategy = strategy
        self.instruction = instruction
        self.batcher = batcher
        self.metrics = metrics
        self.truncate = truncate
        self.max_document_tokens = max_document_tokens
        self.raw = raw
        self.window = window
        # Tokens prepared so far for this request, over all its groups (run concurrently).
        self._tokens = 0
        self._lock = threading.Lock()

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        if not documents:
            check_inputs(query, documents)
            return []
        # The strategy's prepare is the request's one input check (and its tokenisation).
        prepared = await asyncio.to_thread(self._prepare, query, documents)
        if self.strategy.whole_requests:
            # A cascade's candidate list: one batch of its own (outside the token budget).
            scores = list(await self.batcher.run_one(prepared.key, prepared.items))
        else:
            scores = await self.batcher.submit(prepared.items, prepared.lengths, key=prepared.key)
        self.strategy.check(
            scores, truncate=self.truncate, max_document_tokens=self.max_document_tokens
        )
        return scores

    def _prepare(self, query: str, documents: Sequence[str]) -> Prepared:
        start = time.perf_counter()
        prepared = self._prepare_within_cap(query, documents)
        self.metrics.observe_prepare(time.perf_counter() - start)
        return prepared

    def _prepare_within_cap(self, query: str, documents: Sequence[str]) -> Prepared:
        limit = self.batcher.max_queued_tokens
        if limit is None or not self._may_exceed(query, documents, limit):
            return self._count(self._prepare_some(query, documents), limit)
        # Tokenised a slice at a time, so that a request over the queue cap is refused
        # after about the cap's worth of tokenising, not all of it (1,000 long documents).
        check_inputs(query, documents)
        parts: list[Prepared] = []
        for start in range(0, len(documents), _PREPARE_SLICE):
            end = start + _PREPARE_SLICE
            try:
                part = self._prepare_some(query, documents[start:end])
            except InvalidInputError:
                # Raised again with the request's own indices (the documents before
                # this slice passed).
                self._prepare_some(query, documents[:end])
                raise
            parts.append(self._count(part, limit))
        return Prepared(
            [item for part in parts for item in part.items],
            [n for part in parts for n in part.lengths],
            key=parts[0].key,
        )

    def _prepare_some(self, query: str, documents: Sequence[str]) -> Prepared:
        return self.strategy.prepare(
            query,
            documents,
            truncate=self.truncate,
            max_document_tokens=self.max_document_tokens,
            raw=self.raw,
            instruction=self.instruction,
        )

    def _may_exceed(self, query: str, documents: Sequence[str], limit: int) -> bool:
        if not self.strategy.per_request_truncation:
            return False  # lengths are estimated from the text: nothing costly to stop
        # A token covers at least one byte (byte-level BPE, WordPiece), so this bounds
        # the request's tokens from above without tokenising.
        q = len(query.encode("utf-8", "replace")) + _SPECIAL_TOKENS
        cap = self.window if self.truncate and self.window else None
        bound = 0
        for document in documents:
            pair = q + len(document.encode("utf-8", "replace"))
            bound += min(pair, cap) if cap else pair
            if bound > limit:
                return True
        return False

    def _count(self, prepared: Prepared, limit: int | None) -> Prepared:
        with self._lock:
            self._tokens += sum(prepared.lengths)
            total = self._tokens
        if limit is not None and total > limit:
            raise RequestTooLargeError(
                f"the request holds more than {limit} tokens, the most the server queues at "
                "once (--max-queued-tokens); send fewer or shorter documents per request"
            )
        return prepared


async def _until_disconnect(request: Request, work: Awaitable[_T]) -> _T:
    """Await ``work`` unless the client disconnects first (then cancel it)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watch.cancel()
        raise
    if task in done:
        watch.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone


async def _disconnected(receive: Callable[[], Awaitable[Any]]) -> None:
    # The body has been read: the next message is the disconnect (or the end of the
    # response, which cannot come before the answer).
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return
