"""Command-line options: placement, JSON lines, model/key/dtype options, docs coverage."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins import CrossEncoderScorer, rank
from rerank_plugins.cli import _parser
from tests.cli_run import DOCS, run

ROOT = Path(__file__).resolve().parents[1]


def test_options_work_before_and_after_the_subcommand(modernbert_dir: Path) -> None:
    after = run(["rerank", "w1 w2", *DOCS, "--model", str(modernbert_dir), "-n", "2", "--json"])
    before = run(["--model", str(modernbert_dir), "-n", "2", "--json", "rerank", "w1 w2", *DOCS])
    mixed = run(["-v", "--json", "rerank", "w1 w2", *DOCS, "-n", "2", "-m", str(modernbert_dir)])
    assert after[0] == before[0] == mixed[0] == 0
    assert json.loads(after[1]) == json.loads(before[1]) == json.loads(mixed[1])
    assert len(json.loads(after[1])) == 2


def test_verbose_after_the_subcommand_logs_throughput(
    modernbert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        code, _ = run(
            ["rerank", "w1", *DOCS * 4, "-m", str(modernbert_dir), "--batch-tokens", "16", "-v"]
        )
    assert code == 0
    assert any("tokens/s" in r.getMessage() for r in caplog.records)


def test_jsonl_in_gives_jsonl_out_keeping_every_field(modernbert_dir: Path) -> None:
    records = [{"id": f"doc-{i}", "text": d, "meta": {"n": i}} for i, d in enumerate(DOCS)]
    lines = "\n".join(json.dumps(r) for r in records) + "\n"
    code, out = run(
        ["rerank", "w1 w2", "--format", "jsonl", "-m", str(modernbert_dir)], stdin=lines, tty=False
    )
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    scores = CrossEncoderScorer(modernbert_dir, device="cpu").score("w1 w2", DOCS)
    assert [r["index"] for r in rows] == [r.index for r in rank(scores)]
    for row in rows:
        original = records[row["index"]]
        assert {k: row[k] for k in original} == original  # id, text, metadata kept
        assert row["score"] == pytest.approx(scores[row["index"]].value)
        assert row["tokens"] == scores[row["index"]].tokens
        assert row["truncated"] is False


def test_output_logit_dtype_and_batch_tokens_reach_the_scorer(modernbert_dir: Path) -> None:
    code, out = run(
        ["rerank", "w1", *DOCS, "-m", str(modernbert_dir), "--json", "--output", "logit",
         "--dtype", "float32", "--batch-tokens", "8", "--no-progress"]
    )  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    logits = CrossEncoderScorer(modernbert_dir, device="cpu", output="logit").score("w1", DOCS)
    assert all(r["kind"] == "logit" for r in rows)
    assert [r["score"] for r in rows] == pytest.approx(
        [logits[r["index"]].value for r in rows], abs=1e-5
    )


def test_rerank_model_is_the_default_model(
    modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANK_MODEL", str(modernbert_dir))
    code, out = run(["rerank", "w1", *DOCS, "--json"])
    assert code == 0 and len(json.loads(out)) == len(DOCS)


def capture_options(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_load(spec: str, **options: Any) -> Any:
        seen.append({"spec": spec, **options})
        from rerank_plugins.testing import FunctionScorer

        return FunctionScorer(lambda q, d: 1.0)

    monkeypatch.setattr("rerank_plugins.cli.rerank.load_scorer", fake_load)
    return seen


def test_api_key_option_and_the_dialects_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = capture_options(monkeypatch)
    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    monkeypatch.setenv("VOYAGE_API_KEY", "from-env")
    url = "https://api.example.com/v1"
    assert run(["rerank", "q", "d", "-m", url, "--api-key", "sk-1"])[0] == 0
    assert run(["rerank", "q", "d", "-m", url, "--dialect", "voyage"])[0] == 0
    monkeypatch.setenv("RERANK_API_KEY", "ours")  # $RERANK_API_KEY wins over the dialect's
    assert run(["rerank", "q", "d", "-m", url, "--dialect", "voyage"])[0] == 0
    assert seen[0]["api_key"] == "sk-1"
    assert seen[1]["api_key_env"] == "VOYAGE_API_KEY" and "api_key" not in seen[1]
    assert "api_key_env" not in seen[2] and "api_key" not in seen[2]


def test_local_only_options_are_refused_for_an_endpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _ = run(["rerank", "q", "d", "-m", "http://127.0.0.1:8000", "--dtype", "bf16"])
    assert code == 2
    assert "--dtype only applies to local models" in capsys.readouterr().err  # issue 20: grammar


def option_strings(parser: Any) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_the_command_line_page_lists_every_option_of_the_help() -> None:
    parser = _parser()
    sub = parser._subparsers._group_actions[0].choices["rerank"]
    options = option_strings(parser) | option_strings(sub)
    assert "--api-key" in options and "--progress" in options  # the parser is what we think
    # The options table moved from the README to the documentation site's command-line page.
    section = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", section))
    missing = sorted(o for o in options if o not in listed and o != "--no-progress")
    assert not missing, f"docs/cli.md does not list {missing}"
    assert "--no-progress" in section


def test_two_options_for_the_other_kind_of_model_are_named_in_plural(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["rerank", "q", "d", "-m", "http://127.0.0.1:8000", "--dtype", "bf16", "--layer", "2"]
    assert run(argv)[0] == 2
    assert "--dtype, --layer only apply to local models" in capsys.readouterr().err


def test_layer_for_a_model_that_is_not_matryoshka_says_so(
    modernbert_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(["rerank", "q", "d", "-m", str(modernbert_dir), "--layer", "2"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "--layer only applies to matryoshka models" in err and len(err.splitlines()) == 1


def test_score_kind_is_the_name_and_output_its_deprecated_spelling(
    modernbert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["rerank", "w1", *DOCS, "-m", str(modernbert_dir), "--json", "--no-progress"]
    code, out = run([*argv, "--score-kind", "logit"])
    assert code == 0 and all(r["kind"] == "logit" for r in json.loads(out))
    assert "deprecated" not in caplog.text
    with caplog.at_level(logging.WARNING):
        code, old = run([*argv, "--output", "logit"])
    assert code == 0 and json.loads(old) == json.loads(out)
    assert "--output logit is deprecated: write --score-kind logit" in caplog.text
    # Before the subcommand too; and score's -o/--output is a directory, a separate option.
    args = _parser().parse_args(["--score-kind", "logit", "score", "in.parquet", "-o", "dir"])
    assert (args.score_kind, args.output) == ("logit", "dir")


@pytest.mark.parametrize(
    ("suffix", "lines"),
    [
        (".txt", ["w1 w2", "", "w9", "  ", "w1 w3"]),
        (".jsonl", ['{"text": "w1 w2"}', "", '{"text": "w9"}', "  ", '{"text": "w1 w3"}']),
    ],
)
def test_blank_lines_in_a_file_keep_the_line_numbers_in_index(
    tmp_path: Path, suffix: str, lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    capture_options(monkeypatch)  # a scorer that gives every document 1.0
    path = tmp_path / f"docs{suffix}"
    path.write_text("\n".join(lines) + "\n")
    code, out = run(["rerank", "q", "--file", str(path), "--json"])
    assert code == 0
    by_index = {row["index"]: row["text"] for row in json.loads(out)}
    # index = line number - 1: the blank lines 2 and 4 are skipped but keep their place.
    assert by_index == {0: "w1 w2", 2: "w9", 4: "w1 w3"}
