"""benchmarks/gpu_check.py --smoke: the GPU check runs end to end on the CPU, so it cannot rot.

The script is what runs first whenever a GPU machine is lent (for a few minutes, by
chance): a crash there would waste the machine. Here every section runs on tiny shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # the whole GPU check on the CPU (a minute or more)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "gpu_check.md").read_text().startswith("# gpu_check")
    assert "## speed (ok" in proc.stdout  # the tables are printed too
    result: dict = json.loads((out / "gpu_check.json").read_text())
    return result


def test_every_section_runs(smoke: dict) -> None:
    sections = {"environment", "parity", "speed", "backends", "colbert", "mmbert", "gte"}
    sections.add("qwen3")
    assert {k for k, v in smoke.items() if v.get("status") == "ok"} == sections


def test_environment_measures_a_gemm_peak(smoke: dict) -> None:
    env = smoke["environment"]["result"]
    assert env["gemm_peak_tflops"] > 0 and env["torch"] and env["auto_backends"]


def test_fp32_parity_on_the_cpu_is_exact_to_1e4(smoke: dict) -> None:
    parity = smoke["parity"]["result"]
    assert parity["native_auto"]["max_abs_d_logit"] < 1e-4
    assert parity["native_auto"]["kendall_tau"] == 1.0
    assert all(v < 1e-4 for v in parity["native_fp32_max_abs_d_logit"].values())
    assert "varlen" in parity["backend_errors"]  # CUDA-only: recorded, not fatal


def test_speed_covers_three_workloads_and_three_engines(smoke: dict) -> None:
    speed = smoke["speed"]["result"]
    for workload in ("a", "b", "c"):
        rows = speed[workload]["engines"]
        assert len(rows) == 3
        assert all(r["docs_per_s"] > 0 and r["first_call_s"] > 0 for r in rows.values())
        assert speed[workload]["flops"] > 0


def test_backends_colbert_mmbert_and_gte_report_numbers(smoke: dict) -> None:
    backends = smoke["backends"]["result"]
    assert set(backends["engines"]) == {"flex", "sdpa"} and "varlen" in backends["unavailable"]
    colbert = smoke["colbert"]["result"]
    assert colbert["warm_rerank_ms_p50"] > 0 and colbert["cold_tokens_per_s"] > 0
    assert colbert["cache_hits"] >= 20 * colbert["candidates"]  # warm reranks hit the cache
    exits = smoke["mmbert"]["result"]["exits"]
    assert len(exits) == 4 and all(r["predicted_speedup"] >= 1 for r in exits.values())
    gte = smoke["gte"]["result"]
    assert gte["max_abs_d_logit_vs_fp32"] < 1e-4 and gte["kendall_tau_vs_fp32"] == 1.0


def test_qwen3_section_compares_st_and_prefix_reuse(smoke: dict) -> None:
    qwen3 = smoke["qwen3"]["result"]
    assert "st_error" not in qwen3  # sentence-transformers loads the Qwen3 checkpoint
    long_tailed = qwen3["long_tailed"]["engines"]
    assert len(long_tailed) == 3 and all(r["docs_per_s"] > 0 for r in long_tailed.values())
    assert qwen3["long_tailed"]["native_vs_st"] > 0 and qwen3["long_tailed"]["flops"] > 0
    assert set(qwen3["short"]["engines"]) == {"native", "native, prefix_cache=False"}
    assert qwen3["short"]["prefix_on_vs_off"] > 0
    # fp32 on the CPU: prefix reuse leaves the scores as they are.
    assert qwen3["prefix_on_vs_off_max_abs_d_logit"] < 1e-4
    assert qwen3["prefix_on_vs_off_kendall_tau"] == 1.0
