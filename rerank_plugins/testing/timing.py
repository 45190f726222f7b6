"""The benchmarks' timer, shipped so that notebooks and scripts outside the clone use it:
:func:`round_robin` (interleaved best-of-N with wall and CPU clocks) and
:class:`PeakMemory` (peak RSS growth, or torch's peak on CUDA). Pure Python.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Clock",
    "PeakMemory",
    "Run",
    "round_robin",
    "rss_bytes",
    "time_call",
    "time_calls",
    "trim_heap",
]

Clock = Literal["wall", "cpu"]


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so that RSS growth
    measures the next run only; a no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS growth may then under-count
        pass


def rss_bytes() -> int:
    """This process's resident set size in bytes (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory during a ``with`` block, in bytes (``.peak``): on ``"cuda"`` the peak
    allocated by torch, otherwise the RSS growth, sampled every 5 ms after a GC and
    :func:`trim_heap`."""

    def __init__(self, device_type: str = "cpu") -> None:
        self.device_type = device_type
        self.peak = 0
        self._stop = threading.Event()
        self._base = 0

    def _sample(self, base: int) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes() - base)
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            trim_heap()
            self._thread = threading.Thread(target=self._sample, args=(rss_bytes(),), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device_type == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()


@dataclass
class Run:
    """One timed call: wall and process-CPU seconds (all threads), what the call returned,
    the peak memory (0 when not measured) and, for a failed call, the error."""

    engine: str
    seconds: float
    cpu_seconds: float
    value: Any = None
    peak_bytes: int = 0
    error: str | None = None

    def on(self, clock: Clock) -> float:
        """Seconds on ``clock``."""
        return self.seconds if clock == "wall" else self.cpu_seconds


def time_call(
    name: str,
    fn: Callable[[], Any],
    *,
    sync: Callable[[], None] | None = None,
    memory: str | None = None,
) -> Run:
    """Time one call of ``fn`` (``sync`` before the clocks stop; peak memory on device type
    ``memory`` when given)."""
    mem = PeakMemory(memory) if memory else None
    if mem:
        mem.__enter__()
    try:
        cpu = time.process_time()
        start = time.perf_counter()
        value = fn()
        if sync:
            sync()
        wall = time.perf_counter() - start
        cpu = time.process_time() - cpu
    finally:
        if mem:
            mem.__exit__()
    return Run(name, wall, cpu, value, mem.peak if mem else 0)


def time_calls(
    name: str, fn: Callable[[], Any], runs: int, *, sync: Callable[[], None] | None = None
) -> list[Run]:
    """``runs`` consecutive timed calls of ``fn`` (for medians, and for engines that need a
    state between calls, such as a warm cache)."""
    return [time_call(name, fn, sync=sync) for _ in range(runs)]


def round_robin(
    engines: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    clock: Clock = "wall",
    sync: Callable[[], None] | None = None,
    memory: str | None = None,
    max_rounds: Mapping[str, int] | None = None,
    catch: tuple[type[BaseException], ...] = (RuntimeError, MemoryError),
    on_error: Callable[[], None] | None = None,
) -> dict[str, Run]:
    """Best of ``rounds`` runs per engine, every round timing every engine once, so that
    background load on a shared machine spreads over all engines instead of biasing the
    ones measured during it.

    ``clock`` picks the best run; the run kept carries both clocks, and the highest peak
    memory seen over its rounds. ``max_rounds`` limits an engine (e.g. a very slow
    baseline) to its first rounds. An exception in ``catch`` (e.g. out of memory) makes a
    failed :class:`Run` with ``error`` set, the engine is not run again, and ``on_error``
    (e.g. ``torch.cuda.empty_cache``) is called. Returns runs in ``engines`` order.
    """
    limits = max_rounds or {}
    best: dict[str, Run] = {}
    for r in range(rounds):
        for name, fn in engines.items():
            if (name in best and best[name].error) or r >= limits.get(name, rounds):
                continue
            try:
                run = time_call(name, fn, sync=sync, memory=memory)
            except catch as exc:
                run = Run(name, math.nan, math.nan, error=f"{type(exc).__name__}: {exc}"[:200])
                if on_error:
                    on_error()
            previous = best.get(name)
            if previous is None or run.error or run.on(clock) < previous.on(clock):
                if previous is not None and not run.error:
                    run.peak_bytes = max(run.peak_bytes, previous.peak_bytes)
                best[name] = run
            else:
                previous.peak_bytes = max(previous.peak_bytes, run.peak_bytes)
    return {name: best[name] for name in engines if name in best}
