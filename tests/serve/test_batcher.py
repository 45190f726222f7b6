"""The micro-batcher alone: pure asyncio, a recording batch function, no HTTP, no model."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Hashable

import pytest

from rerank_plugins.serve.batcher import (
    BatcherClosedError,
    BatchStats,
    MicroBatcher,
    QueueFullError,
    RequestTooLargeError,
)

Item = tuple[str, int]  # (submission name, position): the result tells where it came from


class Recorder:
    """A batch function that records every batch and answers ``f"{name}:{position}"``."""

    def __init__(self, *, delay: float = 0.0, poison: str | None = None) -> None:
        self.delay = delay
        self.poison = poison
        self.batches: list[tuple[Hashable, list[Item]]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()

    def __call__(self, key: Hashable, items: list[Item]) -> list[str]:
        self.started.set()
        with self.lock:
            self.batches.append((key, list(items)))
        time.sleep(self.delay)
        if self.poison is not None and any(name == self.poison for name, _ in items):
            raise RuntimeError(f"poisoned batch ({len(items)} items)")
        return [f"{name}:{position}" for name, position in items]


def items_of(name: str, n: int) -> list[Item]:
    return [(name, i) for i in range(n)]


async def test_concurrent_submissions_get_results_in_their_own_order() -> None:
    rng = random.Random(0)
    record = Recorder(delay=0.002)
    stats: list[BatchStats] = []
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=100, on_batch=stats.append
    )
    await batcher.start()
    sizes = [rng.randint(1, 12) for _ in range(60)]
    lengths = {f"r{k}": [rng.randint(1, 60) for _ in range(n)] for k, n in enumerate(sizes)}

    async def one(name: str) -> list[str]:
        await asyncio.sleep(rng.random() * 0.02)
        return await batcher.submit(items_of(name, len(lengths[name])), lengths[name])

    names = list(lengths)
    answers = await asyncio.gather(*(one(name) for name in names))
    await batcher.stop()
    for name, answer in zip(names, answers, strict=True):
        assert answer == [f"{name}:{i}" for i in range(len(lengths[name]))]
    scored = [item for _, batch in record.batches for item in batch]
    assert sorted(scored) == sorted(item for n in names for item in items_of(n, len(lengths[n])))
    # Requests were merged: some batch holds items of several submissions.
    assert max(s.requests for s in stats) > 1
    assert batcher.queued_tokens == 0 and batcher.queued_requests == 0


async def test_batches_never_exceed_the_token_budget_and_are_sorted_by_length() -> None:
    rng = random.Random(1)
    record = Recorder(delay=0.001)
    budget = 64
    batcher: MicroBatcher[Item, str] = MicroBatcher(record, max_batch_tokens=budget)
    lengths = {f"r{k}": [rng.choice([1, 5, 20, 63, 64, 200]) for _ in range(8)] for k in range(20)}
    await asyncio.gather(*(batcher.submit(items_of(name, 8), lengths[name]) for name in lengths))
    await batcher.stop()
    for _, batch in record.batches:
        sizes = [lengths[name][i] for name, i in batch]
        assert sum(sizes) <= budget or len(batch) == 1  # only a lone over-budget item exceeds
        assert sizes == sorted(sizes, reverse=True)
    assert any(len(batch) > 1 for _, batch in record.batches)


async def test_max_batch_requests_one_never_merges_submissions() -> None:
    record = Recorder(delay=0.002)
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=1000, max_batch_requests=1
    )
    await asyncio.gather(*(batcher.submit(items_of(f"r{k}", 3), [5, 5, 5]) for k in range(20)))
    await batcher.stop()
    assert all(len({name for name, _ in batch}) == 1 for _, batch in record.batches)
    assert len(record.batches) == 20


async def test_submissions_with_different_keys_never_share_a_batch() -> None:
    record = Recorder(delay=0.002)
    batcher: MicroBatcher[Item, str] = MicroBatcher(record, max_batch_tokens=1000)
    results = await asyncio.gather(
        *(
            batcher.submit(items_of(f"r{k}", 2), [3, 3], key="raw" if k % 2 else "prob")
            for k in range(20)
        )
    )
    await batcher.stop()
    assert all(r == [f"r{k}:0", f"r{k}:1"] for k, r in enumerate(results))
    for key, batch in record.batches:
        assert {int(name[1:]) % 2 for name, _ in batch} == {1 if key == "raw" else 0}


async def test_cancelled_submission_drops_its_pending_items() -> None:
    record = Recorder(delay=0.2)
    batcher: MicroBatcher[Item, str] = MicroBatcher(record, max_batch_tokens=10)
    first = asyncio.ensure_future(batcher.submit(items_of("busy", 1), [10]))
    await asyncio.to_thread(record.started.wait, 5)  # the worker is busy with "busy"
    gone = asyncio.ensure_future(batcher.submit(items_of("gone", 4), [10, 10, 10, 10]))
    await asyncio.sleep(0.02)
    assert batcher.queued_tokens == 40
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queued_tokens == 0 and batcher.queued_requests == 0
    kept = await batcher.submit(items_of("kept", 2), [1, 1])
    assert await first == ["busy:0"] and kept == ["kept:0", "kept:1"]
    await batcher.stop()
    assert not any(name == "gone" for _, batch in record.batches for name, _ in batch)


async def test_an_error_in_a_batch_reaches_only_the_submissions_in_it() -> None:
    record = Recorder(delay=0.05, poison="bad")
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=100, max_batch_requests=1
    )
    # "bad" spans two batches (budget 100, items of 60): its second half never runs.
    tasks = [
        asyncio.ensure_future(batcher.submit(items_of("ok1", 2), [10, 10])),
        asyncio.ensure_future(batcher.submit(items_of("bad", 2), [60, 60])),
        asyncio.ensure_future(batcher.submit(items_of("ok2", 2), [10, 10])),
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    await batcher.stop()
    assert results[0] == ["ok1:0", "ok1:1"] and results[2] == ["ok2:0", "ok2:1"]
    assert isinstance(results[1], RuntimeError) and "poisoned" in str(results[1])
    assert sum(name == "bad" for _, batch in record.batches for name, _ in batch) == 1
    assert batcher.queued_tokens == 0


async def test_full_queue_refuses_with_a_retry_delay_and_oversized_requests_outright() -> None:
    record = Recorder(delay=0.2)
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=10, max_queued_tokens=30
    )
    busy = asyncio.ensure_future(batcher.submit(items_of("busy", 1), [10]))
    await asyncio.to_thread(record.started.wait, 5)
    waiting = asyncio.ensure_future(batcher.submit(items_of("wait", 2), [10, 10]))
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError) as full:
        await batcher.submit(items_of("late", 2), [10, 10])
    assert full.value.retry_after >= 1
    with pytest.raises(RequestTooLargeError):
        await batcher.submit(items_of("huge", 4), [10, 10, 10, 10])
    assert await busy == ["busy:0"] and await waiting == ["wait:0", "wait:1"]
    assert await batcher.submit(items_of("late", 2), [10, 10]) == ["late:0", "late:1"]
    await batcher.stop()


async def test_stop_drains_queued_work_then_refuses_new_work() -> None:
    record = Recorder(delay=0.01)
    batcher: MicroBatcher[Item, str] = MicroBatcher(record, max_batch_tokens=5)
    pending = [
        asyncio.ensure_future(batcher.submit(items_of(f"r{k}", 3), [2, 2, 2])) for k in range(5)
    ]
    await asyncio.sleep(0)
    await batcher.stop(drain=True)
    assert [p.result() for p in pending] == [[f"r{k}:{i}" for i in range(3)] for k in range(5)]
    with pytest.raises(BatcherClosedError):
        await batcher.submit(items_of("after", 1), [1])


async def test_a_padded_cost_model_budgets_len_times_longest() -> None:
    record = Recorder(delay=0.001)
    budget = 64
    batcher: MicroBatcher[Item, str] = MicroBatcher(record, max_batch_tokens=budget, padded=True)
    lengths = {f"r{k}": [30, 2, 2, 2, 2, 2, 2, 2] for k in range(4)}
    await asyncio.gather(*(batcher.submit(items_of(name, 8), lengths[name]) for name in lengths))
    await batcher.stop()
    for _, batch in record.batches:
        sizes = [lengths[name][i] for name, i in batch]
        assert len(sizes) * max(sizes) <= budget or len(batch) == 1
    # Summed, 30 + 2 * 7 fits 64; padded, a 30 shares its batch with one other item at most.
    assert all(len(batch) <= 2 for _, batch in record.batches if batch[0][1] == 0)
