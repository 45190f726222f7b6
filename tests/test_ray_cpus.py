"""Ray never hangs on CPUs: actors leave one CPU to the read tasks, or the call is refused;
a killed driver leaves no Ray process behind. Each test runs its own 2-CPU local Ray in a
child process, under a timeout (a hang fails the test instead of blocking the suite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = pytest.mark.slow

DRIVER = """
import json, sys
import ray
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.ray import score_dataset
from rerank_plugins.testing import FunctionScorer
ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
         object_store_memory=128 * 1024**2)
ray.data.DataContext.get_current().enable_progress_bars = False
ds = ray.data.from_items([{"query": "q", "text": "w" * (i % 9)} for i in range(400)])
scored = score_dataset(ds, model=FunctionScorer(lambda q, d: float(len(d))), concurrency=2,
                       batch_size=50)
rows = scored.take_all()
try:
    score_dataset(ds, model=FunctionScorer(lambda q, d: 1.0), concurrency=2, num_cpus=1)
    refused = ""
except InvalidInputError as exc:
    refused = str(exc)
print(json.dumps({"rows": len(rows), "scores_ok": all(r["score"] == len(r["text"]) for r in rows),
                  "refused": refused}))
ray.shutdown()
"""


def run(code: str, tmp_path: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )


def test_two_actors_on_a_two_cpu_ray_finish_and_a_starving_num_cpus_is_refused(
    tmp_path: Path,
) -> None:
    try:
        proc = run(DRIVER, tmp_path, timeout=400)
    except subprocess.TimeoutExpired:
        pytest.fail("score_dataset(concurrency=2) on a 2-CPU Ray did not finish in 400 s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 400 and result["scores_ok"]
    assert "num_cpus" in result["refused"]


HOLDER = """
import ray, time
ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False,
         object_store_memory=96 * 1024**2)
@ray.remote
def ping():
    return 1
ray.get(ping.remote())
print(ray.get_runtime_context().get_node_id(), flush=True)
print(ray._private.worker.global_worker.node.get_session_dir_path(), flush=True)
time.sleep(600)
"""


def ray_processes(session: str) -> list[str]:
    """Processes whose command line names the session directory (raylet, GCS, workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if session in cmdline:
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_killed_driver_leaves_no_ray_process_behind(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        session = proc.stdout.readline().strip()
        assert session and ray_processes(session), "the driver's Ray did not start"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while ray_processes(session) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray_processes(session) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for line in ray_processes(session) if "session" in locals() and session else []:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)  # what this test started
