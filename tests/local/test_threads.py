"""Intra-op threads come from what the process may use: affinity, cgroup quota, load."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.local.engine import threads as th


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def proc_v2(tmp_path: Path) -> Path:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    return proc


def test_v2_quota_is_read_in_cpus(tmp_path: Path, proc_v2: Path) -> None:
    root = tmp_path / "fs"
    _write(root / "kubepods/pod1/ctr/cpu.max", "250000 100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc_v2) == pytest.approx(2.5)


def test_v2_max_means_no_limit(tmp_path: Path, proc_v2: Path) -> None:
    root = tmp_path / "fs"
    _write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc_v2) is None


def test_the_smallest_quota_along_the_path_applies(tmp_path: Path, proc_v2: Path) -> None:
    root = tmp_path / "fs"
    _write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    _write(root / "kubepods/pod1/cpu.max", "150000 100000\n")
    _write(root / "kubepods/cpu.max", "800000 100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc_v2) == pytest.approx(1.5)


def test_a_container_sees_its_quota_at_the_mount_root(tmp_path: Path) -> None:
    # Inside a cgroup namespace /proc/self/cgroup says "/" and the quota is at the root.
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    root = tmp_path / "fs"
    _write(root / "cpu.max", "200000 100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc) == pytest.approx(2.0)


def test_v1_cfs_quota_is_read(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    root = tmp_path / "fs"
    _write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n")
    _write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc) == pytest.approx(0.5)


def test_v1_minus_one_means_no_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("3:cpu,cpuacct:/\n")
    root = tmp_path / "fs"
    _write(root / "cpu/cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu/cpu.cfs_period_us", "100000\n")
    assert th.cgroup_cpu_limit(root=root, proc_cgroup=proc) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    assert th.cgroup_cpu_limit(root=missing, proc_cgroup=missing) is None


def test_a_quota_below_the_host_caps_the_usable_cpus(
    tmp_path: Path, proc_v2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container limited to 2 CPUs on a 64-core host must not start 64 threads.
    monkeypatch.setattr(th, "_affinity", lambda: set(range(64)))
    monkeypatch.setattr(th, "physical_cores", lambda cpus, **_: len(cpus))
    root = tmp_path / "fs"
    _write(root / "kubepods/pod1/ctr/cpu.max", "200000 100000\n")
    assert th.usable_cpus(root=root, proc_cgroup=proc_v2) == 2
    _write(root / "kubepods/pod1/ctr/cpu.max", "50000 100000\n")  # half a CPU: still 1
    assert th.usable_cpus(root=root, proc_cgroup=proc_v2) == 1


def test_smt_siblings_count_once(tmp_path: Path) -> None:
    for cpu, core in ((0, 0), (1, 0), (2, 1), (3, 1)):
        _write(tmp_path / f"cpu{cpu}/topology/physical_package_id", "0\n")
        _write(tmp_path / f"cpu{cpu}/topology/core_id", f"{core}\n")
    assert th.physical_cores({0, 1, 2, 3}, sys_cpu=tmp_path) == 2
    assert th.physical_cores({0, 2}, sys_cpu=tmp_path) == 2
    assert th.physical_cores({0, 1}, sys_cpu=tmp_path) == 1
    assert th.physical_cores({7}, sys_cpu=tmp_path) == 1  # unreadable: as many as CPUs


def test_busy_cpus_counts_other_work_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th, "_affinity", lambda: {0, 1})
    stat = tmp_path / "stat"
    own = tmp_path / "own"
    samples = iter(
        [
            # user nice system idle iowait irq softirq steal, per CPU
            ("cpu0 100 0 0 100 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0", 0),
            # in 200 ticks of CPU time: 150 busy, of which 50 were this process's own
            ("cpu0 175 0 0 125 0 0 0 0\ncpu1 175 0 0 125 0 0 0 0\ncpu2 900 0 0 0 0 0 0 0", 50),
        ]
    )

    def advance(seconds: float) -> None:
        text, mine = next(samples)
        stat.write_text(f"cpu  1 2 3 4 5 6 7 8\n{text}\n")
        own.write_text(f"1 (python) S {' '.join(['0'] * 10)} {mine} 0 0 0\n")

    advance(0)
    monkeypatch.setattr(th.time, "sleep", advance)
    # 100 of 200 ticks were other work: one of the two CPUs (cpu2 is not ours)
    assert th.busy_cpus(stat=stat, own=own) == pytest.approx(1.0)


def test_busy_cpus_is_none_without_proc(tmp_path: Path) -> None:
    assert th.busy_cpus(stat=tmp_path / "missing", seconds=0) is None


def test_the_choice_subtracts_busy_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "usable_cpus", lambda **_: 8)
    monkeypatch.setattr(th, "busy_cpus", lambda **_: 2.4)
    assert th.choose_threads() == th.ThreadChoice(6, "auto", 8, 2)
    monkeypatch.setattr(th, "busy_cpus", lambda **_: 9.0)  # everything busy: still one
    assert th.choose_threads().threads == 1
    monkeypatch.setattr(th, "busy_cpus", lambda **_: None)
    assert th.choose_threads().threads == 8
    assert th.choose_threads(measure=False).threads == 8


def test_an_explicit_count_wins_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th, "usable_cpus", lambda **_: 8)
    monkeypatch.setattr(th, "busy_cpus", lambda **_: 0.0)
    monkeypatch.setenv(th.THREADS_ENV, "3")
    assert th.choose_threads().threads == 3
    assert th.choose_threads().source == "env"
    assert th.choose_threads(5) == th.ThreadChoice(5, "option", 8)
    assert th.choose_threads("auto").source == "env"
    monkeypatch.setenv(th.THREADS_ENV, "auto")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert th.choose_threads().threads == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's OpenMP setting stands
    assert th.choose_threads() == th.ThreadChoice(2, "env", 8)


@pytest.mark.parametrize("bad", [0, -1, "many", "1.5"])
def test_a_bad_count_is_a_typed_error(bad: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(th.THREADS_ENV, raising=False)
    with pytest.raises(InvalidInputError, match="threads"):
        th.choose_threads(bad)  # type: ignore[arg-type]
    monkeypatch.setenv(th.THREADS_ENV, str(bad))
    with pytest.raises(InvalidInputError, match=th.THREADS_ENV):
        th.choose_threads()


def test_configure_applies_to_torch_once_and_new_threads_inherit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setattr(th, "_configured", None)
    monkeypatch.setattr(th, "usable_cpus", lambda **_: 1)
    try:
        assert th.configure_threads(1).threads == 1
        assert torch.get_num_threads() == 1
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        worker.start()
        worker.join()
        assert seen == [1]
        # later automatic calls keep what is in force; an explicit one re-applies
        monkeypatch.setattr(th, "choose_threads", lambda *a, **k: pytest.fail("re-chosen"))
        assert th.configure_threads().threads == 1
        assert th.configured_threads() == th.ThreadChoice(1, "option", 1)
    finally:
        torch.set_num_threads(before)


def test_load_scorer_takes_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from rerank_plugins import load_scorer
    from rerank_plugins.testing import make_modernbert_checkpoint

    before = torch.get_num_threads()
    monkeypatch.setattr(th, "_configured", None)
    try:
        scorer = load_scorer(make_modernbert_checkpoint(tmp_path / "m"), device="cpu", threads=1)
        assert torch.get_num_threads() == 1
        assert th.configured_threads() is not None
        assert th.configured_threads().source == "option"  # type: ignore[union-attr]
        assert len(scorer.score("q", ["a document"])) == 1
    finally:
        torch.set_num_threads(before)


def test_usable_cpus_never_exceeds_the_affinity() -> None:
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity on this platform")
    assert 1 <= th.usable_cpus() <= len(os.sched_getaffinity(0))


def _fresh(code: str, env: dict[str, str]) -> str:
    import subprocess
    import sys

    full = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    proc = subprocess.run(
        [sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_openmp_threads_wait_passively_unless_told_otherwise() -> None:
    show = "import os; import rerank_plugins.local; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _fresh(show, {}) == "PASSIVE"
    assert _fresh(show, {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice stands
    # torch loaded first: its OpenMP runtime has read the environment already; left alone
    assert _fresh("import torch; " + show, {}) == "None"


@pytest.fixture
def torch_two_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """torch, with two intra-op threads configured; its thread count restored after."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setattr(th, "_configured", th.ThreadChoice(2, "option", 2))
    yield torch
    torch.set_num_threads(before)


def test_a_short_forward_runs_on_one_thread_and_restores_the_count(torch_two_threads: Any) -> None:
    torch = torch_two_threads
    torch.set_num_threads(2)
    with th.forward_threads(th.SERIAL_WORK - 1) as inside:
        assert inside == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with th.forward_threads(th.SERIAL_WORK) as inside:
        assert inside == 2 and torch.get_num_threads() == 2
    # the count is restored when the forward raises, too
    with pytest.raises(RuntimeError), th.forward_threads(0):
        raise RuntimeError("forward failed")
    assert torch.get_num_threads() == 2


def test_a_large_forward_runs_at_the_configured_count_whatever_the_thread_holds(
    torch_two_threads: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch = torch_two_threads
    torch.set_num_threads(1)  # as a thread first run while another ran a short forward
    with th.forward_threads(th.SERIAL_WORK) as inside:
        assert inside == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1  # the thread's own count, restored
    monkeypatch.setattr(th, "_configured", None)  # nothing configured: the thread's count
    with th.forward_threads(th.SERIAL_WORK) as inside:
        assert inside == 1


def test_the_serial_choice_stays_in_the_forward_thread(torch_two_threads: Any) -> None:
    torch = torch_two_threads
    torch.set_num_threads(2)
    inside = threading.Event()
    release = threading.Event()
    seen: list[int] = []

    def short_forward() -> None:
        torch.get_num_threads()  # this thread's OpenMP state exists before the forward
        with th.forward_threads(1):
            seen.append(torch.get_num_threads())
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=short_forward)
    worker.start()
    assert inside.wait(10)
    main_during = torch.get_num_threads()
    release.set()
    worker.join()
    assert seen == [1]
    assert main_during == 2


def test_layer_work_counts_the_linear_maps() -> None:
    # q, k, v and out (4 h^2) and a gated MLP (h -> 2i, i -> h: 3 h i), per token
    assert th.layer_work(10, 64, 96) == 10 * (4 * 64 * 64 + 3 * 64 * 96)


def test_the_engine_runs_short_forwards_serial_and_long_ones_at_the_configured_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_two_threads: Any
) -> None:
    from rerank_plugins import load_scorer
    from rerank_plugins.testing import make_modernbert_checkpoint

    torch = torch_two_threads
    monkeypatch.setattr(th, "_configured", None)  # load_scorer configures
    monkeypatch.setenv("RERANK_PLUGINS_COMPILE", "0")  # eager: every size takes the same path
    scorer: Any = load_scorer(make_modernbert_checkpoint(tmp_path / "m"), device="cpu", threads=2)
    trunk = scorer.classifier.model.trunk
    seen: list[int] = []
    trunk.layers[0].attn.Wqkv.register_forward_pre_hook(
        lambda *_: seen.append(torch.get_num_threads())
    )
    spec = trunk.spec
    # a floor of 40 tokens' work, so that a tiny model's forward can pass it
    monkeypatch.setattr(
        th, "SERIAL_WORK", 40 * th.layer_work(1, spec.hidden_size, spec.intermediate_size)
    )
    scorer.score("q", ["short"])  # under 10 tokens
    scorer.score("q", [" ".join(["word"] * 60)])  # over 60 tokens, one forward
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2
