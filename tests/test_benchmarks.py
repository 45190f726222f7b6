"""The benchmark scripts still run, and the shared harness keeps its promises.

Every script in ``benchmarks/`` runs once in its ``--smoke`` mode (tiny shapes, one round)
as a subprocess, the way a person runs it, and must exit 0 and write a JSON results file
with the expected keys and sane values. The figures themselves mean nothing at that size;
no speed is asserted. The scripts start together (one torch thread each) so that the
suite waits for the slowest, not for the sum.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = [
    "bench_cross_encoder.py",
    "bench_gte_multilingual.py",
    "bench_matryoshka.py",
    "bench_colbert.py",
    "load_test.py",
    "bench_bulk.py",
    "bench_chunking.py",
    "bench_decoder.py",
    "bench_local_attention.py",
    "bench_first_call.py",
    "bench_threads.py",
]
TIMEOUT_S = 300


def load_harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_harness", BENCHMARKS / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


harness = load_harness()


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Start every script's smoke run at once; yield script -> (returncode, output, json)."""
    tmp = tmp_path_factory.mktemp("bench")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    procs = {}
    for script in SCRIPTS:
        out = tmp / f"{script}.json"
        procs[script] = (
            subprocess.Popen(
                [sys.executable, str(BENCHMARKS / script), "--smoke", "--json", str(out)],
                cwd=tmp,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            out,
        )
    results: dict[str, Any] = {}
    try:
        for script, (proc, out) in procs.items():
            output, _ = proc.communicate(timeout=TIMEOUT_S)
            document = json.loads(out.read_text()) if out.exists() else None
            results[script] = (proc.returncode, output, document)
        yield results
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def finished(smoke_runs: dict[str, Any], script: str) -> dict[str, Any]:
    code, output, document = smoke_runs[script]
    assert code == 0, f"{script} --smoke exited {code}:\n{output[-4000:]}"
    assert document is not None, f"{script} wrote no JSON:\n{output[-2000:]}"
    assert {"benchmark", "created", "command", "machine", "args", "results"} <= document.keys()
    assert document["benchmark"] == script.removesuffix(".py")
    assert document["args"]["smoke"] is True
    assert document["results"], "no result rows"
    return dict(document)


def positive(row: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert isinstance(row[key], (int, float)) and row[key] > 0, (key, row)


CROSS_ENCODER_KEYS = {
    "workload", "engine", "seconds", "cpu_seconds", "docs_per_s", "tokens_per_s",
    "ours_over_this", "docs_per_cpu_s", "ours_over_this_cpu", "max_abs_delta", "peak_bytes",
}  # fmt: skip
ENGINES = {"native", "sentence-transformers", "transformers (padded sdpa)"}


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
@pytest.mark.parametrize(
    ("script", "workloads"),
    [
        ("bench_cross_encoder.py", {"a: 6 x 64", "b: 6 x long-tail", "c: 1 x 512"}),
        ("bench_gte_multilingual.py", {"a: 6 x 64", "b: 6 x long-tail"}),
    ],
)
def test_cross_encoder_benchmarks_time_every_engine_on_every_workload(
    smoke_runs: dict[str, Any], script: str, workloads: set[str]
) -> None:
    rows = finished(smoke_runs, script)["results"]
    assert {(r["workload"], r["engine"]) for r in rows} == {
        (w, e) for w in workloads for e in ENGINES
    }
    for row in rows:
        assert CROSS_ENCODER_KEYS <= row.keys(), row
        positive(row, "seconds", "cpu_seconds", "docs_per_s", "tokens_per_s")
        # Same weights, fp32 on both sides: the engines agree with the reference.
        assert row["max_abs_delta"] < 1e-3, row
        if row["engine"] == "native":
            assert row["ours_over_this"] == 1.0 and row["ours_over_this_cpu"] == 1.0


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_matryoshka_benchmark_reports_every_exit(smoke_runs: dict[str, Any]) -> None:
    rows = finished(smoke_runs, "bench_matryoshka.py")["results"]
    assert {(r["layer"], r["dim"]) for r in rows} == {(4, 32), (4, 16), (2, 32), (2, 16)}
    for row in rows:
        positive(row, "seconds", "docs_per_s", "tokens_per_s", "speed_vs_full")
        assert row["max_abs_delta"] < 1e-3, row
    full = next(r for r in rows if (r["layer"], r["dim"]) == (4, 32))
    assert full["speed_vs_full"] == 1.0 and full["flop_predicted_speed"] == 1.0
    half = next(r for r in rows if (r["layer"], r["dim"]) == (2, 32))
    assert half["flop_predicted_speed"] == pytest.approx(2.0)  # 2 of 4 identical layers


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_chunking_benchmark_reports_windows_against_truncation(
    smoke_runs: dict[str, Any],
) -> None:
    rows = finished(smoke_runs, "bench_chunking.py")["results"]
    assert {(r["length"], r["policy"]) for r in rows} == {
        (n, p) for n in (300, 900) for p in ("chunk", "truncate")
    }
    for row in rows:
        positive(row, "wall_s", "cpu_s", "cpu_us_per_token", "vs_truncate")
        if row["policy"] == "truncate":
            assert row["windows"] == 1 and row["vs_truncate"] == 1.0
    # 9 query tokens and 3 specials leave 244 of 256 tokens a window: 300 -> 2, 900 -> 4.
    assert [r["windows"] for r in rows if r["policy"] == "chunk"] == [2, 4]


@pytest.mark.slow
def test_matryoshka_cascade_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "cascade.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_matryoshka.py"),
            "--smoke",
            "--cascade",
            "2:2",
            "--json",
            str(out),
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["scorer"] for r in rows] == ["full", "cascade 2:2"]
    assert rows[0]["speed_vs_full"] == 1.0 and rows[0]["flop_predicted_speed"] == 1.0
    # 2 of 4 identical layers for all 6 documents, 2 more for the 2 kept: 4 / (2 + 2/6*2).
    assert 1.0 < rows[1]["flop_predicted_speed"] < 2.0
    assert rows[1]["max_abs_delta"] < 1e-5


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_colbert_benchmark_compares_cold_warm_and_loop(smoke_runs: dict[str, Any]) -> None:
    document = finished(smoke_runs, "bench_colbert.py")
    engines = [r["engine"] for r in document["results"]]
    assert engines == [
        "ours cold (empty cache)",
        "ours warm (cached vectors)",
        "loop: 1 document per forward",
    ]
    for row in document["results"]:
        positive(row, "seconds", "docs_per_s", "speedup_vs_loop")
    assert document["max_abs_delta_vs_loop"] < 1e-3


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_load_test_loses_no_document(smoke_runs: dict[str, Any]) -> None:
    document = finished(smoke_runs, "load_test.py")
    assert len(document["results"]) == 5
    assert document["lost"] == 0
    for row in document["results"]:
        positive(row, "calls", "documents", "calls_per_s")
        assert row["lost"] == 0 and row["errors"] == 0, row
    positive(document, "in_process_raw_cpu_us", "in_process_ours_cpu_us")


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_bulk_benchmark_scores_every_row_on_every_path(smoke_runs: dict[str, Any]) -> None:
    document = finished(smoke_runs, "bench_bulk.py")
    rows = document["results"]
    assert [r["path"][:3] for r in rows] == ["(1)", "(2)", "(3)"]
    assert document["rows"] == 300  # the script exits non-zero when a path loses a row
    for row in rows:
        positive(row, "rows_per_s", "tokens_per_s", "seconds", "cpu_seconds")
        assert row["max_abs_delta"] < 1e-6, row


@pytest.mark.slow
def test_decoder_benchmark_times_every_engine_and_vocabulary(smoke_runs: dict[str, Any]) -> None:
    rows = finished(smoke_runs, "bench_decoder.py")["results"]
    assert {(r["workload"][:2], r["engine"]) for r in rows} == {
        ("a:", "native"),
        ("a:", "card"),
        ("a:", "sentence-transformers"),
        ("b:", "native"),
        ("b:", "native, prefix_cache=False"),
        ("c:", "native"),
        ("c:", "card"),
    }
    for row in rows:
        assert not row.get("error"), row
        positive(row, "seconds", "cpu_seconds")
        if row["workload"].startswith(("a:", "b:")):
            # Same weights and prompts (sentence-transformers renders the card's prompt
            # through the checkpoint's chat template), fp32: every engine agrees with the
            # reference.
            assert row["max_abs_delta"] < 1e-3, row
    assert {r["vocab"] for r in rows if r["workload"].startswith("c:")} == {1024, 4096}


# --- the harness on its own (no timing asserted) ----------------------------------------


def test_local_attention_benchmark_times_both_paths_with_equal_scores(
    smoke_runs: dict[str, Any],
) -> None:
    rows = finished(smoke_runs, "bench_local_attention.py")["results"]
    assert len(rows) == 2
    for row in rows:
        assert row["blocked_ms"] > 0 and row["auto_ms"] > 0 and row["ratio"] > 0
        assert row["max_abs_delta"] < 1e-5  # the two paths compute the same attention


def test_first_call_benchmark_times_every_mode_in_fresh_processes(
    smoke_runs: dict[str, Any],
) -> None:
    rows = finished(smoke_runs, "bench_first_call.py")["results"]
    assert [(r["mode"], r["cache"]) for r in rows] == [
        ("eager", "-"),
        ("inline", "cold"),
        ("inline", "warm"),
        ("auto", "cold"),
        ("auto", "warm"),
    ]
    for row in rows:
        assert "error" not in row, row
        assert row["load_s"] > 0 and len(row["calls"]) == 2 and min(row["calls"]) > 0


@pytest.mark.slow  # a smoke run of the benchmark scripts (minutes, shared)
def test_threads_benchmark_times_every_mode_of_every_call(smoke_runs: dict[str, Any]) -> None:
    rows = finished(smoke_runs, "bench_threads.py")["results"]
    assert [(r["shape"].split()[0], r["docs"]) for r in rows] == [
        ("tiny", 1),
        ("tiny", 12),
        ("small", 1),
        ("small", 4),
        ("base", 1),
        ("base", 4),
    ]
    for row in rows:
        for mode in ("one thread", "by size", "all threads"):
            assert row[f"{mode} ms"] > 0 and row[f"{mode} cpu ms"] >= 0
        assert row["all ÷ by size"] > 0 and row["one ÷ by size"] > 0


def test_pair_workloads_subset_draws_the_same_documents_as_a_full_run() -> None:
    full = harness.pair_workloads("abc", 7, specials=3, docs=5, fixed=40, longest=90, single=120)
    only_b = harness.pair_workloads("b", 7, specials=3, docs=5, fixed=40, longest=90, single=120)
    assert [w.name for w in full] == ["a: 5 x 40", "b: 5 x long-tail", "c: 1 x 120"]
    assert only_b[0].docs == full[1].docs and only_b[0].query == full[1].query
    a, b, c = full
    assert a.pair_lengths == [40] * 5
    assert max(b.pair_lengths) == 90
    assert c.pair_lengths == [120]


def test_long_tailed_lengths_stay_in_bounds_and_reach_the_longest() -> None:
    lengths = harness.long_tailed_lengths(random.Random(0), 200, median=30, longest=500)
    assert min(lengths) >= 8 and max(lengths) == 500
    assert 15 < sorted(lengths)[100] < 60  # median near 30


def test_round_robin_interleaves_engines_and_honours_max_rounds() -> None:
    calls: list[str] = []
    runs = harness.round_robin(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        3,
        max_rounds={"b": 1},
    )
    assert calls == ["a", "b", "a", "a"]
    assert list(runs) == ["a", "b"]
    assert all(r.seconds >= 0 and r.cpu_seconds >= 0 and r.error is None for r in runs.values())


def test_round_robin_records_a_failure_and_stops_running_that_engine() -> None:
    calls: list[str] = []

    def fails() -> None:
        calls.append("x")
        raise MemoryError("out of memory")

    runs = harness.round_robin({"x": fails, "ok": lambda: 1}, 3)
    assert calls == ["x"]
    assert runs["x"].error == "MemoryError: out of memory" and math.isnan(runs["x"].seconds)
    assert runs["ok"].value == 1 and runs["ok"].error is None


def test_round_robin_keeps_the_best_run_on_the_chosen_clock() -> None:
    values = iter(range(10))
    runs = harness.round_robin({"e": lambda: next(values)}, 4, clock="cpu")
    run = runs["e"]
    # Whichever round won, it is the run with the least CPU time and carries its value.
    assert run.value in range(4)
    assert run.on("cpu") == run.cpu_seconds and run.on("wall") == run.seconds


def test_format_table_aligns_columns_and_prints_failures() -> None:
    columns = [
        harness.Column("name", "engine", 8, "s", left=True),
        harness.Column("rate", "docs/s", 7, ".1f"),
    ]
    rows = [{"name": "fast", "rate": 12.345}, {"name": "slow", "error": "boom"}]
    assert harness.format_table(rows, columns).splitlines() == [
        "engine    docs/s",
        "fast        12.3",
        "slow     failed: boom",
    ]
    markdown = harness.format_table(rows[:1], columns, markdown=True).splitlines()
    assert markdown == ["| engine | docs/s |", "|---|---:|", "| fast | 12.3 |"]


def test_write_json_writes_strict_json_with_nan_as_null(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    harness.write_json(path, "demo", [{"x": math.nan, "y": 1.5}], extra={"z": math.inf})
    document = json.loads(path.read_text())  # strict: no NaN tokens
    assert document["benchmark"] == "demo"
    assert document["results"] == [{"x": None, "y": 1.5}] and document["z"] is None


@pytest.mark.slow  # one interpreter per script, each importing torch
@pytest.mark.parametrize(
    "script",
    sorted(
        p.name for p in BENCHMARKS.glob("*.py") if p.name != "harness.py" and p.name not in SCRIPTS
    ),
)
def test_every_script_without_a_smoke_run_still_starts(script: str) -> None:
    # Scripts with no --smoke run (servers, fault injection) still import what they use:
    # bench_serve once imported a helper that had moved to harness.py.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
