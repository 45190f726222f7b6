"""Any scorer behind the micro-batcher: concurrent calls in one process share forwards.

A web app that holds one reranker and serves many users calls it concurrently; without
this, each call runs its own forward (and LangChain's and LlamaIndex's async just hands the
call to a thread). :class:`BatchingScorer` sends every call's pairs through the same
:class:`~rerank_plugins.batching.MicroBatcher` the server uses, on one background event
loop of its own, so that ``ascore`` calls from any event loop and ``score`` calls from any
thread are merged into token-budget batches; each caller gets its own scores, in its own
order, with the scorer's own truncation policy.

Cancelling an ``ascore`` drops its pending pairs; an input error is raised to its caller
only (it is checked before anything is queued), and a batch that fails is re-run per
caller so that only the caller whose pairs raise gets the error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from rerank_plugins.batching.batcher import MicroBatcher
from rerank_plugins.batching.strategy import Prepared, Strategy, strategy_for
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.scoring import Score, Scorer, check_inputs, takes_instruction

__all__ = ["DEFAULT_BATCH_TOKENS", "BatchingScorer"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_TOKENS = 16384
"""Token budget of one batch for a scorer that states none (``batch_tokens``)."""

_INLINE_CHARS = 8192  # up to this much text, ascore tokenises on the caller's event loop


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _LoopThread:
    """A daemon thread running an event loop that only the batcher uses."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="rerank-batching", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            # Cancel the batcher's task first: a loop closed with it pending logs "Task
            # was destroyed but it is pending!" (at interpreter exit, for a scorer never
            # closed).
            done = asyncio.run_coroutine_threadsafe(_cancel_tasks(), self.loop)
            try:
                done.result(timeout=5)
            except (TimeoutError, concurrent.futures.TimeoutError, RuntimeError):
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class BatchingScorer:
    """``scorer`` with its concurrent calls merged into shared batches.

    ``max_batch_tokens``: token budget of one forward (default: the scorer's
    ``batch_tokens``, else :data:`DEFAULT_BATCH_TOKENS`); ``max_batch_requests``: calls
    merged into one forward at most. A lone call (nothing running or queued) runs its
    forward directly in the calling thread, as without batching; calls that come while a
    forward runs queue and are merged into the next one. :meth:`close` stops the
    thread (it also stops when the object is collected); pickling and copying re-wrap the
    scorer's copy.
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        max_batch_tokens: int | None = None,
        max_batch_requests: int | None = None,
    ) -> None:
        if isinstance(scorer, BatchingScorer):
            raise InvalidInputError("the scorer is already a BatchingScorer")
        if not isinstance(scorer, Scorer):
            raise InvalidInputError(
                f"scorer must implement score() and ascore(), got {type(scorer).__name__}"
            )
        budget = max_batch_tokens or int(getattr(scorer, "batch_tokens", None) or 0)
        self.scorer = scorer
        self.strategy: Strategy = strategy_for(scorer)
        self.max_batch_tokens = budget or DEFAULT_BATCH_TOKENS
        self.max_batch_requests = max_batch_requests
        # Held by whoever runs a forward: the batcher, or a lone caller's direct path.
        self._device = threading.Lock()
        self.batcher: MicroBatcher[Any, Score] = self._new_batcher()
        self._runner: _LoopThread | None = None
        self._lock = threading.Lock()

    # -- what adapters read from a scorer ----------------------------------------------------

    @property
    def name(self) -> str:
        return str(getattr(self.scorer, "name", None) or type(self.scorer).__name__)

    @property
    def max_length(self) -> int | None:
        value = getattr(self.scorer, "max_length", None)
        return int(value) if value is not None else None

    @property
    def batch_tokens(self) -> int:
        return self.max_batch_tokens

    # -- the Scorer protocol ----------------------------------------------------------------

    @property
    def takes_instruction(self) -> bool:
        """Whether the wrapped scorer takes ``instruction=`` (then so do these calls)."""
        return takes_instruction(self.scorer)

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        """Scores in input order; blocks this thread while its pairs wait for a batch.
        ``instruction`` (decoder rerankers) as the wrapped scorer's; a batch holds one."""
        prepared = self._prepare(query, documents, instruction)
        if prepared is None:
            return []
        direct = self._direct(prepared)
        if direct is not None:
            return direct
        future = asyncio.run_coroutine_threadsafe(self._submit(prepared), self._loop())
        try:
            return future.result()
        except BaseException:  # interrupted (KeyboardInterrupt): drop the pending pairs
            future.cancel()
            raise

    async def ascore(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> list[Score]:
        """Scores in input order; cancelling the awaiting task drops its pending pairs."""
        docs = check_inputs(query, documents)
        if not docs:
            return []
        if sum(map(len, docs)) <= _INLINE_CHARS:
            # A few short documents tokenise in ~0.1 ms: less than a hop to a thread.
            prepared = self._prepare(query, docs, instruction)
        else:  # longer inputs tokenise off the caller's event loop
            prepared = await asyncio.to_thread(self._prepare, query, docs, instruction)
        assert prepared is not None
        if self._idle():
            direct = await asyncio.to_thread(self._direct, prepared)
            if direct is not None:
                return direct
        future = asyncio.run_coroutine_threadsafe(self._submit(prepared), self._loop())
        return await asyncio.wrap_future(future)

    def _idle(self) -> bool:
        return self.batcher.queued_requests == 0 and not self._device.locked()

    def _direct(self, prepared: Prepared) -> list[Score] | None:
        """A lone caller's path: the forward in this thread when nothing runs or waits
        (no hand-over to the batching thread), else ``None``. Callers that come while it
        runs queue in the batcher, whose next batch waits for the device."""
        if not self._idle() or not self._device.acquire(blocking=False):
            return None
        try:
            return self.strategy.run_all(prepared.key, prepared.items)
        finally:
            self._device.release()

    def _prepare(
        self, query: str, documents: Sequence[str], instruction: str | None = None
    ) -> Prepared | None:
        docs = check_inputs(query, documents)
        if not docs:
            return None
        return self.strategy.prepare(query, docs, truncate=None, instruction=instruction)

    async def _submit(self, prepared: Prepared) -> list[Score]:
        if self.strategy.whole_requests:  # a cascade's candidate list: never split it
            return list(await self.batcher.run_one(prepared.key, prepared.items))
        return await self.batcher.submit(prepared.items, prepared.lengths, key=prepared.key)

    # -- the batching thread ------------------------------------------------------------------

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._runner is None:
                runner = _LoopThread()
                self._runner = runner
                weakref.finalize(self, runner.stop)
            return self._runner.loop

    def close(self) -> None:
        """Finish what is queued, then stop the batching thread (idempotent)."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None or runner.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.batcher.stop(drain=True), runner.loop).result()
        runner.stop()
        self.batcher = self._new_batcher()

    def _new_batcher(self) -> MicroBatcher[Any, Score]:
        return MicroBatcher(
            self.strategy.run_batch,
            max_batch_tokens=self.max_batch_tokens,
            max_batch_requests=self.max_batch_requests,
            padded=self.strategy.padded,
            device=self._device,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.scorer, self.max_batch_tokens, self.max_batch_requests))

    def __repr__(self) -> str:
        return f"BatchingScorer({self.scorer!r})"


def _rebuild(scorer: Scorer, max_batch_tokens: int, max_batch_requests: int | None) -> Any:
    return BatchingScorer(
        scorer, max_batch_tokens=max_batch_tokens, max_batch_requests=max_batch_requests
    )
