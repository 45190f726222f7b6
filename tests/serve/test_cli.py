"""``rerank-plugins serve`` as a process: starts warm, serves, shuts down gracefully."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rerank_plugins._model_args import add_model_options
from rerank_plugins.cli import _parser, main
from rerank_plugins.serve.cli import _build, _model_options
from rerank_plugins.testing import (
    free_port,
    make_matryoshka_checkpoint,
    random_text,
    wait_until_healthy,
)

ROOT = Path(__file__).resolve().parents[2]


def test_workers_other_than_one_are_refused_with_the_reason(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", str(modernbert_dir), "--workers", "2"]) == 2
    assert "one process serves one device" in capsys.readouterr().err


def test_an_option_the_model_does_not_take_is_a_clear_error(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--model", str(modernbert_dir), "--device", "cpu", "--layer", "2"])
    assert code == 2
    assert "layer" in capsys.readouterr().err


def metric(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    modernbert_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "rerank_plugins", "serve",
        "--model", str(modernbert_dir), "--device", "cpu", "--port", str(port),
        "--max-batch-tokens", "64", "--max-queued-tokens", "1000000", "--log-level", "info",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(f"{url}/health", process, log=log, seconds=120, interval=0.2)
        text = log.read_text()
        # Loaded and warmed before the port accepted connections.
        assert text.index("warmed up") < text.index("Uvicorn running")

        rng = random.Random(0)
        requests = [[random_text(rng, 25) for _ in range(40)] for _ in range(12)]
        answers: list[httpx.Response | Exception] = []

        def call(docs: list[str]) -> None:
            try:
                answers.append(
                    httpx.post(
                        f"{url}/v1/rerank", json={"query": "w1 w2", "documents": docs}, timeout=120
                    )
                )
            except Exception as exc:  # recorded: the assertion below names it
                answers.append(exc)

        threads = [threading.Thread(target=call, args=(docs,)) for docs in requests]
        for t in threads:
            t.start()
        # SIGTERM once every request has been accepted and at least two are in flight.
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{url}/metrics").text
            in_flight = metric(text, "rerank_http_requests_in_flight") - 1  # this scrape
            done = metric(
                text, 'rerank_http_requests_total{method="POST",path="/v1/rerank",status="200"}'
            )
            if in_flight >= 2 and in_flight + done == len(requests):
                break
            assert done < len(requests) - 1, "the requests finished before the signal"
            assert time.monotonic() < deadline, "the requests never got in flight"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        assert process.wait(timeout=120) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert len(answers) == len(requests)
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    assert all(len(a.json()["results"]) == 40 for a in answers if isinstance(a, httpx.Response))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_command_line_imports_no_server_stack_until_serve_runs() -> None:
    code = (
        "import sys, rerank_plugins.cli, rerank_plugins.serve, rerank_plugins.serve.cli\n"
        "print([m for m in ('fastapi', 'uvicorn', 'prometheus_client', 'torch') "
        "if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- the model options: the rerank subcommand's, from one definition ----------------------


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def subcommand(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]  # type: ignore[no-any-return]


def test_serve_and_rerank_take_the_same_model_options() -> None:
    shared = argparse.ArgumentParser(add_help=False)
    add_model_options(shared, defaults=True)
    model_flags = option_strings(shared)
    assert {"--model", "--dtype", "--batch-tokens", "--layer", "--dim"} <= model_flags
    assert model_flags <= option_strings(subcommand("serve"))
    assert model_flags <= option_strings(subcommand("rerank"))


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--model", "DIR", "--dtype", "bfloat16", "--batch-tokens", "4096"],
        ["--dtype", "bfloat16", "--batch-tokens", "4096", "serve", "--model", "DIR"],
        ["--model", "DIR", "serve", "--dtype", "bfloat16", "--max-batch-tokens", "4096"],
    ],
)
def test_model_options_before_or_after_serve_reach_the_scorer(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert args.model == "DIR"
    assert _model_options(args, args.batch_tokens) == {"dtype": "bfloat16", "batch_tokens": 4096}


def test_serve_defaults_to_the_rerank_model_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANK_MODEL", "/models/mine")
    assert _parser().parse_args(["serve"]).model == "/models/mine"


@pytest.mark.parametrize(
    ("model", "flags", "named"),
    [
        ("http://127.0.0.1:9", ["--device", "cpu"], "--device"),
        ("http://127.0.0.1:9", ["--layer", "2"], "--layer"),
        ("DIR", ["--dialect", "tei"], "--dialect"),
    ],
)
def test_a_model_option_for_the_other_kind_of_model_names_the_flag(
    model: str, flags: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--model", model, *flags]) == 2
    err = capsys.readouterr().err
    assert named in err and "only apply to" in err


def test_serve_builds_a_matryoshka_model_at_the_exit_given(tmp_path: Path) -> None:
    directory = make_matryoshka_checkpoint(tmp_path / "mm")
    argv = ["serve", "-m", str(directory), "--device", "cpu", "--layer", "2", "--dim", "21"]
    app, _, _ = _build(_parser().parse_args([*argv, "--batch-tokens", "512"]))
    scorer = app.state.engine.scorer
    assert (scorer.layer, scorer.dim) == (2, 21)
    assert app.state.batcher.max_batch_tokens == 512


def test_docs_pages_are_served_only_with_the_docs_flag(modernbert_dir: Path) -> None:
    from fastapi.testclient import TestClient

    base = ["serve", "-m", str(modernbert_dir), "--device", "cpu"]
    for flags, status in (([], 404), (["--docs"], 200)):
        app, _, _ = _build(_parser().parse_args([*base, *flags]))
        with TestClient(app) as client:
            assert client.get("/docs").status_code == status
            assert client.get("/openapi.json").status_code == 200
