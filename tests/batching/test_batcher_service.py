"""The batcher's order of service and timings: no request waits behind all of a long one."""

from __future__ import annotations

import asyncio

from rerank_plugins.batching import BatchStats, MicroBatcher
from tests.serve.test_batcher import Item, Recorder, items_of


async def test_a_short_request_waits_for_one_batch_of_a_long_one_not_all() -> None:
    record = Recorder(delay=0.02)
    waits: list[float] = []
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=100, on_wait=waits.append
    )
    long = asyncio.ensure_future(batcher.submit(items_of("long", 10), [100] * 10))
    while not record.started.is_set():
        await asyncio.sleep(0.001)
    short = asyncio.ensure_future(batcher.submit(items_of("short", 2), [5, 5]))
    assert await short == ["short:0", "short:1"]
    assert not long.done()  # the short one went ahead of the long one's remaining batches
    await long
    await batcher.stop()
    names = [{name for name, _ in batch} for _, batch in record.batches]
    assert names[0] == {"long"} and "short" in names[1]
    assert len(waits) == 2 and all(w >= 0 for w in waits)


async def test_a_failed_merged_batch_fails_only_the_submission_that_raises() -> None:
    record = Recorder(delay=0.02, poison="bad")
    stats: list[BatchStats] = []
    batcher: MicroBatcher[Item, str] = MicroBatcher(
        record, max_batch_tokens=1000, on_batch=stats.append
    )
    first = asyncio.ensure_future(batcher.submit(items_of("first", 1), [10]))
    while not record.started.is_set():
        await asyncio.sleep(0.001)
    tasks = [
        asyncio.ensure_future(batcher.submit(items_of(name, 2), [10, 10]))
        for name in ("ok1", "bad", "ok2")
    ]
    results = await asyncio.gather(first, *tasks, return_exceptions=True)
    await batcher.stop()
    assert results[0] == ["first:0"]
    assert results[1] == ["ok1:0", "ok1:1"] and results[3] == ["ok2:0", "ok2:1"]
    assert isinstance(results[2], RuntimeError)
    merged = [b for _, b in record.batches if len({n for n, _ in b}) == 3]
    assert merged  # the three were in one batch before being re-run apart
