"""Short requests run between the layers of a long forward (``preemption_point``)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable
from typing import Any

import pytest

from rerank_plugins.batching import BatchStats, MicroBatcher
from rerank_plugins.scoring import preemptible, preemption_point
from tests.serve.test_batcher import Item, items_of


class Layered:
    """A batch function like an engine: ``layers`` steps of ``step`` seconds, a
    preemption point before each; records what ran and what ran inside what."""

    def __init__(self, *, layers: int = 10, step: float = 0.01, poison: str | None = None):
        self.layers, self.step, self.poison = layers, step, poison
        self.log: list[tuple[str, frozenset[str], int]] = []  # (event, names, depth)
        self.depth = 0
        self.started = threading.Event()

    def __call__(self, key: Hashable, items: list[Item]) -> list[str]:
        names = frozenset(name for name, _ in items)
        self.depth += 1
        self.log.append(("start", names, self.depth))
        self.started.set()
        try:
            for _ in range(self.layers):
                preemption_point()
                time.sleep(self.step)
            if self.poison in names:
                raise RuntimeError("poisoned")
            return [f"{name}:{i}" for name, i in items]
        finally:
            self.log.append(("end", names, self.depth))
            self.depth -= 1

    def nested(self) -> list[frozenset[str]]:
        return [names for event, names, depth in self.log if event == "start" and depth > 1]


async def _started(run: Layered) -> None:
    while not run.started.is_set():
        await asyncio.sleep(0.001)


async def test_a_short_request_runs_between_the_layers_of_a_long_batch() -> None:
    run = Layered(layers=30, step=0.01)
    stats: list[BatchStats] = []
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        run, max_batch_tokens=1000, preempt_after=0.02, on_batch=stats.append
    )
    long = asyncio.ensure_future(batcher.submit(items_of("long", 4), [200] * 4))
    await _started(run)
    await asyncio.sleep(0.03)
    shorts = [
        asyncio.ensure_future(batcher.submit(items_of(f"s{k}", 2), [10, 20])) for k in range(3)
    ]
    answers = await asyncio.gather(*shorts)
    assert not long.done()  # answered while the long forward was still running
    assert answers == [[f"s{k}:0", f"s{k}:1"] for k in range(3)]
    assert await long == [f"long:{i}" for i in range(4)]
    await batcher.stop()
    assert run.nested() and all("long" not in names for names in run.nested())
    assert sum(s.items for s in stats) == 4 + 6  # every batch counted once


async def test_batches_of_small_requests_are_not_preempted() -> None:
    # Merging keeps its worth: short batches finish whole, later ones merge behind them.
    run = Layered(layers=10, step=0.01)
    batcher: MicroBatcher[Item, str] = MicroBatcher(run, max_batch_tokens=1000, preempt_after=0)
    first = asyncio.ensure_future(batcher.submit(items_of("a", 2), [10, 10]))
    await _started(run)
    rest = [asyncio.ensure_future(batcher.submit(items_of(n, 1), [10])) for n in "bcd"]
    await asyncio.gather(first, *rest)
    await batcher.stop()
    assert run.nested() == []


async def test_preempt_after_none_never_nests() -> None:
    run = Layered(layers=10, step=0.01)
    batcher: MicroBatcher[Item, str] = MicroBatcher(run, max_batch_tokens=1000, preempt_after=None)
    long = asyncio.ensure_future(batcher.submit(items_of("long", 1), [900]))
    await _started(run)
    short = asyncio.ensure_future(batcher.submit(items_of("short", 1), [5]))
    assert await short == ["short:0"]
    assert long.done()  # it waited for the whole long forward
    await batcher.stop()
    assert run.nested() == []


async def test_an_error_between_layers_reaches_only_its_submission() -> None:
    run = Layered(layers=20, step=0.01, poison="bad")
    batcher: MicroBatcher[Item, str] = MicroBatcher(run, max_batch_tokens=1000, preempt_after=0)
    long = asyncio.ensure_future(batcher.submit(items_of("long", 2), [400, 400]))
    await _started(run)
    subs = [asyncio.ensure_future(batcher.submit(items_of(n, 1), [5])) for n in ("ok", "bad")]
    ok, bad = await asyncio.gather(*subs, return_exceptions=True)
    assert ok == ["ok:0"] and isinstance(bad, RuntimeError)
    assert await long == ["long:0", "long:1"]
    await batcher.stop()
    assert frozenset({"ok", "bad"}) in run.nested()  # merged, then re-run apart


async def test_a_cancelled_short_request_is_not_run_between_layers() -> None:
    run = Layered(layers=20, step=0.01)
    batcher: MicroBatcher[Item, str] = MicroBatcher(run, max_batch_tokens=1000, preempt_after=0.05)
    long = asyncio.ensure_future(batcher.submit(items_of("long", 1), [900]))
    await _started(run)
    gone = asyncio.ensure_future(batcher.submit(items_of("gone", 1), [5]))
    await asyncio.sleep(0)
    gone.cancel()
    await long
    await batcher.stop()
    assert all("gone" not in names for _, names, _ in run.log)
    with pytest.raises(asyncio.CancelledError):
        await gone


def test_the_hook_never_runs_inside_itself_and_is_restored() -> None:
    calls: list[int] = []

    def hook() -> None:
        calls.append(1)
        preemption_point()  # a nested forward's own layers: no recursion

    with preemptible(hook):
        preemption_point()
        preemption_point()
    preemption_point()  # outside: nothing installed
    assert calls == [1, 1]


def test_a_worker_never_waits_long_for_a_loop_that_does_not_answer() -> None:
    # A loop that is blocked or gone must not hang the forward (nor, at exit, the
    # interpreter); items it has not handed over stay queued, never lost.
    run = Layered()
    batcher: MicroBatcher[Item, str] = MicroBatcher(run, max_batch_tokens=1000)
    idle = asyncio.new_event_loop()  # never runs: the worker's request is not answered
    try:
        batcher._loop_ref = idle
        batcher.handoff_timeout = 0.05
        started = time.perf_counter()
        batcher._run_small_batch()
        assert time.perf_counter() - started < 1.0
        sub: asyncio.Future[list[str]] = asyncio.Future(loop=idle)  # for when it runs late
        queued = _queued(batcher, sub)
        idle.call_soon(idle.stop)
        idle.run_forever()  # the late callback: abandoned, so it takes nothing
        assert list(batcher._queue) == [queued] and queued.pending
    finally:
        idle.close()
    batcher._run_small_batch()  # a closed loop: returns at once
    assert run.log == []


def _queued(batcher: MicroBatcher[Item, str], future: asyncio.Future[list[str]]) -> Any:
    from collections import deque

    from rerank_plugins.batching.batcher import _Submission

    sub = _Submission(
        key=None,
        items=[("late", 0)],
        lengths=[5],
        future=future,
        pending=deque([0]),
        results=[None],
        remaining=1,
        small=True,
    )
    batcher._queue.append(sub)
    batcher._small_waiting += 1
    batcher._queued_tokens += 5
    return sub


@pytest.mark.parametrize(
    "options", [{"preempt_after": -0.01}, {"preempt_after": float("nan")}, {"small_tokens": -1}]
)
def test_a_negative_preemption_setting_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        MicroBatcher(Layered(), max_batch_tokens=1000, **options)  # type: ignore[arg-type]
