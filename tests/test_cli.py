"""The rerank-plugins command line on a local checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins import load_scorer, rank
from tests.cli_run import DOCS, run


def expected_order(model: Path, query: str, docs: list[str]) -> list[int]:
    scores = load_scorer(str(model), device="cpu").score(query, docs)
    return [r.index for r in rank(scores)]


def test_json_output_is_ranked_and_complete(modernbert_dir: Path) -> None:
    code, out = run(["rerank", "w1 w2", *DOCS, "--model", str(modernbert_dir), "--json"])
    assert code == 0
    rows = json.loads(out)
    assert [r["index"] for r in rows] == expected_order(modernbert_dir, "w1 w2", DOCS)
    assert [r["text"] for r in rows] == [DOCS[r["index"]] for r in rows]
    assert all(r["kind"] == "probability" and 0 < r["score"] < 1 for r in rows)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]


def test_table_output_with_top_n(modernbert_dir: Path) -> None:
    code, out = run(["rerank", "w1 w2", *DOCS, "--model", str(modernbert_dir), "-n", "2"])
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "index", "tokens", "text"]
    best = expected_order(modernbert_dir, "w1 w2", DOCS)[:2]
    assert [int(line.split()[2]) for line in lines[1:]] == best


def test_documents_from_stdin_and_files(modernbert_dir: Path, tmp_path: Path) -> None:
    model = ["--model", str(modernbert_dir), "--json"]
    _, from_args = run(["rerank", "w1 w2", *DOCS, *model])
    _, from_stdin = run(["rerank", "w1 w2", *model], stdin="\n".join(DOCS) + "\n\n", tty=False)
    (tmp_path / "docs.json").write_text(json.dumps(DOCS))
    _, from_json = run(["rerank", "w1 w2", "--file", str(tmp_path / "docs.json"), *model])
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    _, from_jsonl = run(["rerank", "w1 w2", "-f", str(tmp_path / "docs.jsonl"), *model])
    assert json.loads(from_args) == json.loads(from_stdin) == json.loads(from_json)
    assert json.loads(from_jsonl) == json.loads(from_args)


def test_errors_exit_2_with_a_message(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["rerank", "w1", "--model", str(modernbert_dir)])[0] == 2
    assert "no documents" in capsys.readouterr().err
    assert run(["rerank", "w1", "w2", "--model", str(modernbert_dir), "-n", "0"])[0] == 2
    assert "top_n" in capsys.readouterr().err
    assert run(["rerank", "w1", "w2", "--model", "/no/such/dir"])[0] == 2
    assert "/no/such/dir" in capsys.readouterr().err


def test_overflow_error_flag(modernbert_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long_doc = " ".join(["w3"] * 50)
    argv = ["rerank", "w1", long_doc, "--model", str(modernbert_dir), "--max-length", "16"]
    code, out = run([*argv, "--json"])
    assert code == 0 and json.loads(out)[0]["truncated"] is True
    assert run([*argv, "--overflow", "error"])[0] == 2
    assert "exceed" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing torch (> 5 s here)
def test_console_script_runs_as_a_module(modernbert_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rerank_plugins",
            "rerank",
            "w1",
            "w1 w2",
            "w3",
            "--model",
            str(modernbert_dir),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert len(json.loads(proc.stdout)) == 2


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["--device", "cpu"], None, "--device"),
        (["--max-length", "64"], None, "--max-length"),
    ],
)
def test_local_only_options_with_an_endpoint_are_one_line_and_exit_2(
    argv: list[str], stdin: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["rerank", "q", "d", "--model", "http://127.0.0.1:9/v1", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_dialect_with_a_local_model_is_refused(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["rerank", "q", "d", "--model", str(modernbert_dir), "--dialect", "tei"])
    err = capsys.readouterr().err
    assert code == 2 and "--dialect" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "content"),
    [("binary.txt", bytes(range(256)) * 4), ("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))],
)
def test_a_file_that_is_not_utf8_is_one_line_and_exit_2(
    modernbert_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
) -> None:
    (tmp_path / name).write_bytes(content)
    code, _ = run(["rerank", "q", "-f", str(tmp_path / name), "--model", str(modernbert_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "UTF-8" in err and len(err.strip().splitlines()) == 1


def test_invalid_jsonl_on_stdin_is_one_line_and_exit_2(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["rerank", "q", "--format", "jsonl", "--model", str(modernbert_dir)]
    code, _ = run(argv, stdin='{"text": "a"}\n{not json\n', tty=False)
    err = capsys.readouterr().err
    assert code == 2 and "JSONL" in err and len(err.strip().splitlines()) == 1


def test_binary_stdin_is_one_line_and_exit_2(modernbert_dir: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "rerank_plugins", "rerank", "q", "--model", str(modernbert_dir)],
        input=b"\xff\xfe\x00binary\x80\n",
        capture_output=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    err = process.stderr.decode()
    assert process.returncode == 2, err
    assert "UTF-8" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
