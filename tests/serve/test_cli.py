"""``rerank-plugins serve`` as a process: starts warm, serves, shuts down gracefully."""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rerank_plugins.cli import _parser, main
from rerank_plugins.cli.model_options import add_model_options
from rerank_plugins.cli.serve import serve_options
from rerank_plugins.serve.runner import build_server
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


@pytest.mark.slow  # a server in a subprocess, under load (> 5 s here)
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
        # Loaded and warmed before the port accepted connections, then the objects
        # alive frozen out of garbage collection (shorter GIL pauses under traffic).
        assert text.index("warmed up") < text.index("Uvicorn running")
        assert text.index("warmed up") < text.index("frozen out of garbage collection")

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
        "import sys, rerank_plugins.cli, rerank_plugins.serve, rerank_plugins.serve.runner\n"
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
    assert serve_options(args).scorer_options() == {"dtype": "bfloat16", "batch_tokens": 4096}


@pytest.mark.parametrize(
    ("given", "seconds"), [(None, 0.05), ("20", 0.02), ("0", 0.0), ("off", None)]
)
def test_preempt_after_ms_reaches_the_batcher(given: str | None, seconds: float | None) -> None:
    flags = [] if given is None else ["--preempt-after-ms", given]
    options = serve_options(_parser().parse_args(["serve", "--model", "DIR", *flags]))
    assert options.preempt_after == seconds
    assert options.app_options(batch_tokens=None)["preempt_after"] == seconds


@pytest.mark.parametrize("given", ["-5", "soon", "inf"])
def test_a_bad_preempt_after_ms_is_refused_by_name(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _parser().parse_args(["serve", "--model", "DIR", "--preempt-after-ms", given])
    assert exit_.value.code == 2 and "--preempt-after-ms" in capsys.readouterr().err


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
    assert named in err and "only applies to" in err  # one flag (issue 20: grammar)


def test_serve_builds_a_matryoshka_model_at_the_exit_given(tmp_path: Path) -> None:
    directory = make_matryoshka_checkpoint(tmp_path / "mm")
    argv = ["serve", "-m", str(directory), "--device", "cpu", "--layer", "2", "--dim", "21"]
    app = build_server(serve_options(_parser().parse_args([*argv, "--batch-tokens", "512"])))
    scorer = app.state.engine.scorer
    assert (scorer.layer, scorer.dim) == (2, 21)
    assert app.state.batcher.max_batch_tokens == 512


# -- issue 20, item 18: the port, the key, the warning, the help ------------------------


def test_a_port_in_use_is_one_line_and_exit_2_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--model", "/no/such/model", "--port", str(port)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "/no/such/model" not in err  # refused before any loading


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_a_blank_api_key_is_refused(key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "/no/such/model", "--api-key", key]) == 2
    assert "only whitespace" in capsys.readouterr().err


def test_a_blank_api_key_from_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "key"
    path.write_text("  \n")
    assert main(["serve", "--model", "/no/such/model", "--api-key-file", str(path)]) == 2
    assert "only whitespace" in capsys.readouterr().err


def test_the_api_key_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "key"
    path.write_text("s3cret\n")
    args = _parser().parse_args(["serve", "--api-key-file", str(path)])
    assert serve_options(args).resolved_api_key() == "s3cret"
    monkeypatch.setenv("RERANK_API_KEY", "from-env")
    assert serve_options(_parser().parse_args(["serve"])).resolved_api_key() == "from-env"
    with pytest.raises(SystemExit):  # one source at a time
        _parser().parse_args(["serve", "--api-key", "a", "--api-key-file", str(path)])


def test_an_unreadable_api_key_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--api-key-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read the API key file" in err


def test_a_non_loopback_host_without_a_key_warns_loudly(
    modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    argv = ["serve", "-m", str(modernbert_dir), "--device", "cpu", "--host", "0.0.0.0"]
    with caplog.at_level(logging.WARNING):
        build_server(serve_options(_parser().parse_args(argv)))
    assert "WITHOUT AN API KEY" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_server(serve_options(_parser().parse_args([*argv, "--api-key", "k"])))
    assert "WITHOUT AN API KEY" not in caplog.text


def test_serve_help_shows_every_default() -> None:
    serve = subcommand("serve")
    undocumented = [
        action.option_strings[-1]
        for action in serve._actions
        if action.option_strings
        and action.help != argparse.SUPPRESS
        and "-h" not in action.option_strings
        and "default" not in (action.help or "")
    ]
    assert undocumented == []


@pytest.mark.parametrize("argv", [["serve", "-v"], ["-v", "serve"], ["serve", "--verbose"]])
def test_verbose_before_or_after_serve_means_debug_logs(argv: list[str]) -> None:
    assert serve_options(_parser().parse_args(argv)).log_level == "debug"
    assert serve_options(_parser().parse_args(["serve"])).log_level == "info"


def test_serve_says_layer_only_applies_to_matryoshka_models(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["serve", "--model", str(modernbert_dir), "--device", "cpu", "--layer", "2"])
    assert code == 2
    assert "--layer only applies to matryoshka models" in capsys.readouterr().err


def test_docs_pages_are_served_only_with_the_docs_flag(modernbert_dir: Path) -> None:
    from fastapi.testclient import TestClient

    base = ["serve", "-m", str(modernbert_dir), "--device", "cpu"]
    for flags, status in (([], 404), (["--docs"], 200)):
        app = build_server(serve_options(_parser().parse_args([*base, *flags])))
        with TestClient(app) as client:
            assert client.get("/docs").status_code == status
            assert client.get("/openapi.json").status_code == 200
