"""What the endpoints share: the served scorer's strategy, batcher and metrics, and the one
path from a request's ``(query, documents)`` groups to their scores.

:func:`create_app` keeps one :class:`Service` in ``app.state.service``; endpoints get it
through the :func:`service` dependency.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request

from rerank_plugins.scoring import Score, ascore_groups, check_inputs
from rerank_plugins.serve.batcher import MicroBatcher, RequestTooLargeError
from rerank_plugins.serve.handlers import ClientGone
from rerank_plugins.serve.metrics import Metrics
from rerank_plugins.serve.strategy import Strategy
from rerank_plugins.wire import TOKENS_HEADER, TRUNCATED_HEADER

__all__ = ["Outcome", "Service", "request_id", "service", "truncation_headers"]

_T = TypeVar("_T")

_MAX_TOKENS_HEADER = 8192


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
            truncate=truncate,
            max_document_tokens=max_document_tokens,
            raw=raw,
        )
        scored = await _until_disconnect(request, ascore_groups(submitter, groups, concurrent=True))
        outcome = Outcome([s for group in scored for s in group])
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


class _Submitter:
    """One request's way to the batcher, as the async scorer :func:`ascore_groups` calls."""

    def __init__(
        self,
        strategy: Strategy,
        batcher: MicroBatcher[Any, Score],
        *,
        truncate: bool,
        max_document_tokens: int | None,
        raw: bool,
    ) -> None:
        self.strategy = strategy
        self.batcher = batcher
        self.truncate = truncate
        self.max_document_tokens = max_document_tokens
        self.raw = raw

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        if not documents:
            check_inputs(query, documents)
            return []
        # The strategy's prepare is the request's one input check (and its tokenisation).
        prepared = await asyncio.to_thread(
            self.strategy.prepare,
            query,
            documents,
            truncate=self.truncate,
            max_document_tokens=self.max_document_tokens,
            raw=self.raw,
        )
        if self.strategy.whole_requests:
            # A cascade's candidate list: one batch of its own (outside the token budget).
            scores = list(await self.batcher.run_one(prepared.key, prepared.items))
        else:
            scores = await self.batcher.submit(prepared.items, prepared.lengths, key=prepared.key)
        self.strategy.check(scores, truncate=self.truncate)
        return scores


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
