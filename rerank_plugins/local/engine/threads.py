"""How many intra-op threads a forward may use: what the process can really run on.

Two OpenMP threads on two shared cores spin and wait at every operator's barrier for a
thread the kernel has descheduled: beside two busy processes a server at torch's default
(the host's core count) fell to 15 documents/s where one thread served 692. So the count
comes from what the process may use, never from the host's core count:

- the CPUs it may run on (``os.sched_getaffinity``: ``taskset``, ``docker --cpuset-cpus``);
- the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``:
  ``docker --cpus``, Kubernetes limits), rounded down: a 2.5-CPU quota runs 2 threads;
- physical cores among those CPUs (SMT siblings share one core's arithmetic units);
- minus the cores other processes keep busy, measured over a short interval on first use
  (``/proc/stat``): a thread on a core something else saturates only slows every barrier.

And idle OpenMP threads sleep instead of spinning (:func:`passive_openmp_wait`, set when
``rerank_plugins.local`` is imported before torch): spinning at a barrier while the awaited
thread is descheduled is what turned contention into collapse.

:func:`choose_threads` decides; :func:`configure_threads` applies the choice once per
process (``torch.set_num_threads``), before the first forward. An explicit count (the
``threads=`` option of :func:`~rerank_plugins.load_scorer`, ``--threads``, the
``RERANK_THREADS`` or ``OMP_NUM_THREADS`` environment variables, or a
``torch.set_num_threads`` call made before the first scorer) wins over the automatic one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rerank_plugins.errors import InvalidInputError

__all__ = [
    "THREADS_ENV",
    "ThreadChoice",
    "busy_cpus",
    "cgroup_cpu_limit",
    "choose_threads",
    "configure_threads",
    "configured_threads",
    "forward_threads",
    "layer_work",
    "passive_openmp_wait",
    "physical_cores",
    "usable_cpus",
]

logger = logging.getLogger(__name__)

THREADS_ENV = "RERANK_THREADS"
"""Environment variable: intra-op threads (a positive integer, or ``auto``)."""

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC = Path("/proc")
_SYS_CPU = Path("/sys/devices/system/cpu")
_SAMPLE_SECONDS = 0.1

SERIAL_WORK = 2**26
"""Multiply-adds of the linear maps per layer (:func:`layer_work`) below which a forward
runs on one intra-op thread: with idle OpenMP threads asleep, waking one costs more than
it saves on a short forward. Attention is left out: on short sequences it is small, and
on a long one at a small hidden size it did not gain from a second thread either
(benchmarks/RESULTS.md, "Threads by forward size")."""

_lock = threading.Lock()
_configured: ThreadChoice | None = None


@dataclass(frozen=True, slots=True)
class ThreadChoice:
    """The intra-op thread count and why: ``source`` is ``"option"``, ``"env"``,
    ``"torch"`` (set by the caller before) or ``"auto"``; ``usable`` the CPUs the process
    may use, ``busy`` the cores measured busy with other work (``None``: not measured)."""

    threads: int
    source: str
    usable: int
    busy: int | None = None


# -- what the process may use -------------------------------------------------------------


def _own_cgroup_paths(proc_cgroup: Path, controller: str | None) -> list[str]:
    """The process's cgroup paths: the v2 one (``controller=None``) or a v1 controller's."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controller is None and controllers == "":
            found.append(path)
        elif controller is not None and controller in controllers.split(","):
            found.append(path)
    return found


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and every directory above it up to ``base`` (quotas nest: the
    smallest along the way applies)."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read_v2(directory: Path) -> float | None:
    try:
        quota, *rest = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    period = float(rest[0]) if rest else 100000.0
    try:
        value = float(quota) / period
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _read_v1(directory: Path) -> float | None:
    try:
        quota = float((directory / "cpu.cfs_quota_us").read_text())
        period = float((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:  # -1: no limit
        return None
    return quota / period


def cgroup_cpu_limit(
    *, root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC / "self" / "cgroup"
) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 2.5), or ``None`` without one.

    Reads cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` along
    the process's cgroup path (and at the mount root, where a container sees its own
    cgroup); the smallest quota found applies.
    """
    limits: list[float] = []
    for path in _own_cgroup_paths(proc_cgroup, None) or ["/"]:
        for directory in _ancestors(root, path):
            value = _read_v2(directory)
            if value is not None:
                limits.append(value)
    for path in _own_cgroup_paths(proc_cgroup, "cpu") or ["/"]:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            for directory in _ancestors(root / mount, path):
                value = _read_v1(directory)
                if value is not None:
                    limits.append(value)
    return min(limits) if limits else None


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], *, sys_cpu: Path = _SYS_CPU) -> int:
    """Distinct physical cores among ``cpus`` (SMT siblings counted once); ``len(cpus)``
    where the topology cannot be read."""
    cores = set()
    for cpu in cpus:
        topology = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)
        cores.add((package, core))
    return len(cores) or len(cpus)


def usable_cpus(*, root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC / "self" / "cgroup") -> int:
    """CPUs the process may keep busy: physical cores it may run on, capped by its cgroup
    quota (rounded down, at least 1)."""
    cpus = _affinity()
    count = physical_cores(cpus)
    quota = cgroup_cpu_limit(root=root, proc_cgroup=proc_cgroup)
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


# -- what other processes keep busy --------------------------------------------------------


def _cpu_times(stat: Path, cpus: set[int]) -> tuple[float, float]:
    """(busy, total) jiffies summed over ``cpus`` from ``/proc/stat``."""
    busy = total = 0.0
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [float(v) for v in fields[:8]]
        idle = values[3] + values[4]  # idle + iowait
        total += sum(values)
        busy += sum(values) - idle
    return busy, total


def busy_cpus(
    *, seconds: float = _SAMPLE_SECONDS, stat: Path = _PROC / "stat", own: Path | None = None
) -> float | None:
    """CPUs (of those the process may run on) kept busy by *other* work, measured over
    ``seconds``; ``None`` where ``/proc/stat`` cannot be read."""
    cpus = _affinity()
    own = own or _PROC / "self" / "stat"
    try:
        busy0, total0 = _cpu_times(stat, cpus)
        mine0 = _own_ticks(own)
        time.sleep(seconds)
        busy1, total1 = _cpu_times(stat, cpus)
        mine1 = _own_ticks(own)
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    if total <= 0:
        return None
    # Both in clock ticks; this process runs only on ``cpus``, so its own ticks are part
    # of their busy time.
    others = max(0.0, (busy1 - busy0) - (mine1 - mine0))
    return others / total * len(cpus)


def _own_ticks(own: Path) -> float:
    fields = own.read_text().rsplit(")", 1)[1].split()
    return float(fields[11]) + float(fields[12])  # utime + stime of every thread


# -- how idle OpenMP threads wait ----------------------------------------------------------


def passive_openmp_wait() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it or torch is already loaded
    (OpenMP reads it once, when the runtime loads); whether it was set.

    With the default (active) policy an OpenMP thread that reaches a barrier spins,
    burning its time slice, while the thread it waits for is descheduled by other load:
    a 22-layer model at two threads beside two busy processes used 26 CPU-seconds for what
    takes 0.5 at one thread, and a server fell from 28 to 1.8 documents/s; with passive
    waiting the same two threads used 0.47 CPU-seconds (benchmarks/RESULTS.md).
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return False
    if "torch" in sys.modules:
        logger.debug("torch is already loaded: OMP_WAIT_POLICY stays as it is")
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


# -- the choice ----------------------------------------------------------------------------


def _parse(value: int | str | None, where: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count <= 0:
        raise InvalidInputError(f"{where} must be a positive integer or 'auto', got {value!r}")
    return count


def choose_threads(threads: int | str | None = None, *, measure: bool = True) -> ThreadChoice:
    """The intra-op thread count: ``threads`` if given, else ``$RERANK_THREADS``, else
    ``$OMP_NUM_THREADS``, else the usable CPUs minus the cores other processes keep busy
    (``measure``), at least 1."""
    usable = usable_cpus()
    explicit = _parse(threads, "threads")
    if explicit is not None:
        return ThreadChoice(explicit, "option", usable)
    env = _parse(os.environ.get(THREADS_ENV), THREADS_ENV)
    if env is not None:
        return ThreadChoice(env, "env", usable)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:  # the user's own OpenMP setting stands
        return ThreadChoice(int(omp), "env", usable)
    busy = busy_cpus() if measure and usable > 1 else None
    taken = 0 if busy is None else int(busy + 0.5)
    return ThreadChoice(max(1, usable - taken), "auto", usable, taken if busy is not None else None)


def configure_threads(threads: int | str | None = None) -> ThreadChoice:
    """Apply the thread choice to torch once per process; an explicit ``threads`` (or a
    later explicit call) re-applies. Returns what is in force."""
    global _configured
    with _lock:
        if _configured is not None and _parse(threads, "threads") is None:
            return _configured
        import torch

        choice = choose_threads(threads)
        if choice.source == "auto" and torch.get_num_threads() != len(_affinity()):
            # torch.set_num_threads was called before the first scorer: the caller's
            # own choice stands.
            choice = ThreadChoice(torch.get_num_threads(), "torch", choice.usable, choice.busy)
        torch.set_num_threads(choice.threads)
        _configured = choice
    logger.info(
        "intra-op threads: %d (%s; %d usable CPUs%s)",
        choice.threads,
        choice.source,
        choice.usable,
        "" if choice.busy is None else f", {choice.busy} busy with other work",
    )
    return choice


def configured_threads() -> ThreadChoice | None:
    """The choice :func:`configure_threads` applied, or ``None`` before the first."""
    return _configured


def layer_work(tokens: int, hidden: int, intermediate: int) -> int:
    """Multiply-adds of one encoder layer's linear maps (q, k, v, out: ``4 h^2``; a gated
    MLP: ``3 h i``) over ``tokens`` tokens."""
    return tokens * hidden * (4 * hidden + 3 * intermediate)


@contextlib.contextmanager
def forward_threads(work: float) -> Iterator[int]:
    """Run one forward of ``work`` multiply-adds per layer at a fitting intra-op count.

    Below :data:`SERIAL_WORK`, one thread; from it on, the configured count
    (:func:`configure_threads`; before any, the calling thread's). The count is set in
    the calling thread only (OpenMP keeps one per thread) and restored after, so forwards
    in other threads, and a thread that first ran while another ran a short forward
    (torch starts a new thread at the last count set), are not affected. Yields the count.
    """
    import torch

    before = torch.get_num_threads()
    if work < SERIAL_WORK:
        wanted = 1
    else:
        wanted = before if _configured is None else _configured.threads
    if wanted == before:
        yield wanted
        return
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)
