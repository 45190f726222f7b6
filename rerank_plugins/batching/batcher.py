"""Cross-request dynamic batching: pure asyncio, no HTTP, no model.

Callers ``submit`` a list of items (with their lengths in tokens); one loop task merges
the items of every queued submission into batches of at most ``max_batch_tokens``
tokens and hands each batch to ``run_batch`` in a worker thread, one batch at a time.
A submission gets its results back, in its own order, as soon as its last item is
scored; its items may span several batches.

- **Order of service**: submissions are served first come, first served; the items of
  one submission are taken longest first, and each batch is sorted longest first (similar
  lengths end up together, which is what the packed engine and padded backends want). A
  submission that spans several batches goes to the back of the queue after each one, so
  the requests that came while its batch ran go into the next batch: a short request
  waits for at most one batch of a long one, never for all of it.
- **Budget**: a batch's cost never exceeds ``max_batch_tokens``, except a single item
  longer than the budget, which runs alone. The cost is the sum of the items' lengths
  (packed execution), or ``len(batch) * longest`` with ``padded=True`` (padded tensors):
  the batch is the one the engine runs, in one forward, as it is handed over.
- **No waiting**: a batch starts as soon as the previous one ends, with whatever is
  queued; merging happens because submissions pile up while a forward runs. So the wait
  adapts by itself: a lone request on an idle device runs at once, and the busier the
  device the fuller each batch (there is no timer to tune).
- **Short requests never wait for a whole long forward**: while a batch has run for
  ``preempt_after`` seconds, the engine's layer loop gives way (at
  :func:`~rerank_plugins.scoring.preemption_point`) to a batch of the small submissions
  queued meanwhile (at most ``small_tokens`` tokens each), run in the same worker thread
  between two layers; the long forward goes on after it, one layer at least between two
  such batches. One forward at a time still: a short request waits for at most
  ``preempt_after`` and one layer, not for a long document's whole forward.
- **Keys**: only submissions with the same ``key`` share a batch (e.g. raw logits vs
  probabilities); ``max_batch_requests`` caps the submissions per batch (1: no merging
  across submissions).
- **Backpressure**: queued tokens are bounded by ``max_queued_tokens``; a submission
  that does not fit gets :class:`QueueFullError` (with a retry delay estimated from the
  measured throughput), one that could never fit :class:`RequestTooLargeError`.
- **Cancellation**: cancelling the task awaiting ``submit`` drops its queued items
  (results of items already in a running batch are discarded).
- **Errors**: an exception from ``run_batch`` on a batch that merged several submissions
  re-runs each submission's share of it alone, so the error reaches only the submission
  whose items raise it; that submission's other queued items are dropped, the others go on.
- **Timings**: ``on_wait(seconds)`` gets each submission's queue wait (submitted until
  its first item starts in a batch); ``on_batch`` each batch's compute time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rerank_plugins.errors import RerankError, ScoringError
from rerank_plugins.scoring import preemptible

__all__ = [
    "BatchStats",
    "BatcherClosedError",
    "MicroBatcher",
    "QueueFullError",
    "RequestTooLargeError",
]

logger = logging.getLogger(__name__)

DEFAULT_PREEMPT_AFTER = 0.05
"""Seconds a batch runs before short requests queued meanwhile may run between its layers."""

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class QueueFullError(RerankError):
    """The queue holds too many tokens; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTooLargeError(RerankError):
    """A submission larger than the whole queue: it can never be accepted; send less."""


class BatcherClosedError(RerankError):
    """The batcher is stopping or stopped and takes no new work."""


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one batch was: items, tokens, submissions merged, seconds in ``run_batch``."""

    items: int
    tokens: int
    requests: int
    seconds: float


@dataclass(eq=False)
class _Submission:
    key: Hashable
    items: Sequence[Any]
    lengths: Sequence[int]
    future: asyncio.Future[list[Any]]
    pending: deque[int]  # item positions not yet in a batch, longest first
    results: list[Any] = field(default_factory=list)
    remaining: int = 0  # items not yet scored
    submitted: float = 0.0  # time.perf_counter() at submit
    started: bool = False  # some item has been in a batch
    small: bool = False  # may run between the layers of a long batch

    @property
    def pending_tokens(self) -> int:
        return sum(self.lengths[i] for i in self.pending)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Merges items from concurrent submissions into token-budget batches.

    ``run_batch(key, items) -> results`` is called in a dedicated worker thread with the
    items of one batch (all submitted with ``key``) and must return one result per item,
    in order. ``on_batch`` (optional) is called on the event loop after each batch,
    ``on_wait`` with each submission's queue wait in seconds. ``device`` (optional): a lock
    that the batcher holds while it forms and runs a batch, for a caller that also runs
    forwards of its own on the same model (a lone caller's direct path): batches then
    form only once the device is free, with everything queued meanwhile.
    ``preempt_after`` (seconds; ``None``: never) and ``small_tokens`` (default a quarter
    of the budget): see "Short requests" above.
    Start with :meth:`start` inside the running loop (e.g. an ASGI lifespan); ``submit``
    also starts it on first use.
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_tokens: int,
        max_batch_requests: int | None = None,
        max_queued_tokens: int | None = None,
        padded: bool = False,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
        device: threading.Lock | None = None,
        preempt_after: float | None = DEFAULT_PREEMPT_AFTER,
        small_tokens: int | None = None,
    ) -> None:
        if max_batch_tokens <= 0:
            raise ValueError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
        if max_batch_requests is not None and max_batch_requests <= 0:
            raise ValueError(f"max_batch_requests must be positive, got {max_batch_requests}")
        if max_queued_tokens is not None and max_queued_tokens <= 0:
            raise ValueError(f"max_queued_tokens must be positive, got {max_queued_tokens}")
        if preempt_after is not None and not preempt_after >= 0:
            raise ValueError(f"preempt_after must be 0 or more seconds, got {preempt_after}")
        if small_tokens is not None and small_tokens < 0:
            raise ValueError(f"small_tokens must be 0 or more, got {small_tokens}")
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_queued_tokens = max_queued_tokens
        self.padded = padded
        self._on_batch = on_batch
        self._on_wait = on_wait
        self._device = device
        self.preempt_after = preempt_after
        self.small_tokens = max_batch_tokens // 4 if small_tokens is None else small_tokens
        self._small_waiting = 0  # small submissions in the queue (read by the worker)
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        self.handoff_timeout = 1.0  # seconds the worker waits for the loop's small batch
        self._queue: deque[_Submission] = deque()
        self._queued_tokens = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._tokens_per_second: float | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def queued_tokens(self) -> int:
        """Tokens of the items waiting for a batch (not those being scored)."""
        return self._queued_tokens

    @property
    def queued_requests(self) -> int:
        """Submissions with items waiting for a batch."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def closing(self) -> bool:
        """``stop`` was called: no new work is taken."""
        return self._closing

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batching loop in the running event loop (idempotent)."""
        if self.running:
            return
        if self._closing:
            raise BatcherClosedError("the batcher was stopped")
        self._wakeup = asyncio.Event()
        self._loop_ref = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerank-batch")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="rerank-batcher")

    async def stop(self, *, drain: bool = True) -> None:
        """Take no new work; with ``drain`` finish what is queued, else fail it."""
        self._closing = True
        if not drain:
            while self._queue:
                self._fail(self._queue[0], BatcherClosedError("the server is shutting down"))
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def run_one(self, key: Hashable, items: list[ItemT]) -> Sequence[ResultT]:
        """Run ``run_batch`` directly on the worker thread (e.g. a warm-up), outside the queue."""
        await self.start()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_batch, key, items)

    # -- submissions ---------------------------------------------------------------------

    async def submit(
        self, items: Sequence[ItemT], lengths: Sequence[int], *, key: Hashable = None
    ) -> list[ResultT]:
        """Results for ``items`` in their order, once every item has been scored."""
        if len(items) != len(lengths):
            raise ValueError(f"{len(items)} items but {len(lengths)} lengths")
        if not items:
            return []
        if self._closing:
            raise BatcherClosedError("the server is shutting down")
        await self.start()
        tokens = sum(lengths)
        limit = self.max_queued_tokens
        if limit is not None:
            if tokens > limit:
                raise RequestTooLargeError(
                    f"the request holds {tokens} tokens, more than the server queues at once "
                    f"({limit}); send fewer documents per request"
                )
            if self._queued_tokens + tokens > limit:
                raise QueueFullError(
                    f"the queue is full ({self._queued_tokens} of {limit} tokens waiting); "
                    "retry later",
                    retry_after=self._retry_after(tokens),
                )
        loop = asyncio.get_running_loop()
        order = sorted(range(len(items)), key=lambda i: lengths[i], reverse=True)
        sub = _Submission(
            key=key,
            items=items,
            lengths=lengths,
            future=loop.create_future(),
            pending=deque(order),
            results=[None] * len(items),
            remaining=len(items),
            submitted=time.perf_counter(),
            small=tokens <= self.small_tokens,
        )
        self._small_waiting += sub.small
        self._queue.append(sub)
        self._queued_tokens += tokens
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await sub.future
        except asyncio.CancelledError:
            self._drop(sub)
            raise

    def _retry_after(self, tokens: int) -> int:
        """Seconds until the queue has probably drained enough for ``tokens`` more."""
        rate = self._tokens_per_second
        if not rate:
            return 1
        excess = self._queued_tokens + tokens - (self.max_queued_tokens or 0)
        return max(1, min(60, math.ceil(max(excess, 0) / rate)))

    def _unqueue(self, sub: _Submission) -> None:
        self._queue.remove(sub)
        self._small_waiting -= sub.small

    def _drop(self, sub: _Submission) -> None:
        """Forget a submission's queued items (its caller went away)."""
        if sub in self._queue:
            self._unqueue(sub)
            self._queued_tokens -= sub.pending_tokens
        sub.pending.clear()
        if not sub.future.done():
            sub.future.cancel()

    def _fail(self, sub: _Submission, exc: BaseException) -> None:
        if sub in self._queue:
            self._unqueue(sub)
            self._queued_tokens -= sub.pending_tokens
        sub.pending.clear()
        if not sub.future.done():
            sub.future.set_exception(exc)

    # -- the loop ------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._device is not None:  # wait until nobody else runs a forward
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._device.acquire
                )
            try:
                picked = self._take()
                if picked:
                    await self._run(picked)
            finally:
                if self._device is not None:
                    self._device.release()
            # A submission with more batches to come goes behind those that came while
            # its batch ran.
            for sub in dict.fromkeys(sub for sub, _ in picked):
                if sub.pending and sub in self._queue:
                    self._queue.remove(sub)
                    self._queue.append(sub)

    def _take(self, *, small_only: bool = False) -> list[tuple[_Submission, int]]:
        """The next batch (of small submissions only, with ``small_only``):
        (submission, item position) pairs, longest first."""
        eligible = [sub for sub in self._queue if sub.small or not small_only]
        if not eligible:  # cancelled while the batcher waited for the device
            return []
        key = eligible[0].key
        picked: list[tuple[_Submission, int]] = []
        tokens = 0
        longest = 0
        cost = 0
        merged = 0
        full = False
        for sub in eligible:
            if sub.key != key:
                continue
            if self.max_batch_requests is not None and merged >= self.max_batch_requests:
                break
            took = False
            while sub.pending:
                n = sub.lengths[sub.pending[0]]
                after = (len(picked) + 1) * max(longest, n) if self.padded else tokens + n
                if picked and after > self.max_batch_tokens:
                    full = True
                    break
                picked.append((sub, sub.pending.popleft()))
                tokens += n
                longest = max(longest, n)
                cost = after
                took = True
            merged += took
            if took and not sub.started:
                sub.started = True
                if self._on_wait is not None:
                    self._on_wait(time.perf_counter() - sub.submitted)
            if not sub.pending:
                self._unqueue(sub)
            if full or cost >= self.max_batch_tokens:
                break
        self._queued_tokens -= tokens
        picked.sort(key=lambda p: p[0].lengths[p[1]], reverse=True)
        return picked

    async def _run(self, picked: list[tuple[_Submission, int]]) -> None:
        key = picked[0][0].key
        items = [sub.items[i] for sub, i in picked]
        tokens = sum(sub.lengths[i] for sub, i in picked)
        subs = list(dict.fromkeys(sub for sub, _ in picked))
        start = time.perf_counter()
        try:
            # Only a batch holding a large submission gives way to small ones.
            results = await self._forward(key, items, preempt=not all(s.small for s in subs))
        except Exception as exc:
            _log_failure(len(items), exc)
            if len(subs) == 1:
                self._fail(subs[0], exc)
            else:  # find whose items raise: each submission's share alone
                await self._isolate(key, picked)
            return
        seconds = time.perf_counter() - start
        if seconds > 0:
            rate = tokens / seconds
            previous = self._tokens_per_second
            self._tokens_per_second = rate if previous is None else 0.8 * previous + 0.2 * rate
        self._deliver(picked, results)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(items), tokens, len(subs), seconds))

    async def _forward(
        self, key: Hashable, items: list[Any], *, preempt: bool = False
    ) -> Sequence[Any]:
        loop = asyncio.get_running_loop()
        run = self._run_preemptible if preempt else self._run_batch
        results = await loop.run_in_executor(self._executor, run, key, items)
        _check_count(results, items)
        return results

    # -- short batches between the layers of a long one (worker thread) ---------------------

    def _run_preemptible(self, key: Hashable, items: list[Any]) -> Sequence[Any]:
        if self.preempt_after is None:
            return self._run_batch(key, items)
        started = time.perf_counter()
        after = self.preempt_after

        def between_layers() -> None:
            # Plain reads of the loop's counters: at worst one layer late.
            if self._small_waiting and time.perf_counter() - started >= after:
                self._run_small_batch()

        with preemptible(between_layers):
            return self._run_batch(key, items)

    def _run_small_batch(self) -> None:
        loop = self._loop_ref
        assert loop is not None
        handoff = _Handoff()
        try:
            loop.call_soon_threadsafe(self._take_small, handoff)
        except RuntimeError:  # the loop is closed: nobody to answer
            return
        picked = handoff.wait(self.handoff_timeout)
        if not picked:
            return
        key = picked[0][0].key
        items = [sub.items[i] for sub, i in picked]
        start = time.perf_counter()
        try:
            results = self._run_batch(key, items)
            _check_count(results, items)
        except Exception as exc:  # as in _run: the error reaches only its own submission
            _log_failure(len(items), exc)
            shares = _shares(picked)
            if len(shares) == 1:
                loop.call_soon_threadsafe(self._fail, shares[0][0], exc)
                return
            for sub, share in shares:
                try:
                    part = self._run_batch(key, [sub.items[i] for _, i in share])
                    _check_count(part, share)
                except Exception as failure:
                    loop.call_soon_threadsafe(self._fail, sub, failure)
                    continue
                loop.call_soon_threadsafe(self._deliver, share, part)
            return
        stats = BatchStats(
            len(items),
            sum(sub.lengths[i] for sub, i in picked),
            len({id(sub) for sub, _ in picked}),
            time.perf_counter() - start,
        )
        loop.call_soon_threadsafe(self._delivered, picked, results, stats)

    def _take_small(self, handoff: _Handoff) -> None:
        """On the loop: the small batch for the worker, unless it stopped waiting."""
        with handoff.lock:
            if not handoff.abandoned:
                handoff.picked = self._take(small_only=True)
        handoff.ready.set()

    def _delivered(
        self, picked: list[tuple[_Submission, int]], results: Sequence[Any], stats: BatchStats
    ) -> None:
        self._deliver(picked, results)
        if self._on_batch is not None:
            self._on_batch(stats)

    async def _isolate(self, key: Hashable, picked: list[tuple[_Submission, int]]) -> None:
        for sub, share in _shares(picked):
            if sub.future.done():
                continue
            try:
                results = await self._forward(key, [sub.items[i] for _, i in share])
            except Exception as exc:  # reaches only this submission
                self._fail(sub, exc)
                continue
            self._deliver(share, results)

    def _deliver(self, picked: list[tuple[_Submission, int]], results: Sequence[Any]) -> None:
        for (sub, i), result in zip(picked, results, strict=True):
            if sub.future.done():  # cancelled or failed meanwhile: nobody to answer
                continue
            sub.results[i] = result
            sub.remaining -= 1
            if sub.remaining == 0:
                sub.future.set_result(sub.results)


def _shares(
    picked: list[tuple[_Submission, int]],
) -> list[tuple[_Submission, list[tuple[_Submission, int]]]]:
    """Each submission of a batch with its own (submission, item) pairs, in batch order."""
    subs = dict.fromkeys(sub for sub, _ in picked)
    return [(sub, [(s, i) for s, i in picked if s is sub]) for sub in subs]


def _log_failure(n_items: int, exc: BaseException) -> None:
    # A foreign error's message may quote the input: only ours are logged whole.
    said = f": {exc}" if isinstance(exc, RerankError) else ""
    logger.warning("a batch of %d items failed: %s%s", n_items, type(exc).__name__, said)


def _check_count(results: Sequence[Any], items: Sequence[Any]) -> None:
    if len(results) != len(items):
        raise ScoringError(
            f"the batch function returned {len(results)} results for {len(items)} items"
        )


class _Handoff:
    """A small batch handed from the event loop to the worker between two layers. A
    worker that stops waiting (the loop is blocked or gone) marks it abandoned under the
    lock, so the loop never takes items nobody will run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.picked: list[tuple[_Submission, int]] | None = None
        self.abandoned = False

    def wait(self, timeout: float) -> list[tuple[_Submission, int]] | None:
        self.ready.wait(timeout)
        with self.lock:
            if self.picked is None:
                self.abandoned = True
            return self.picked
