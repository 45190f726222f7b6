"""Bulk outputs stay true to their inputs: no mixed models on --resume, no edited shard
kept, no bad row that stops a run, no NaN score, no secret in a file, honest summaries."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_plugins.bulk import score_file
from rerank_plugins.cli import main
from rerank_plugins.errors import EndpointError, InvalidInputError, ResumeConflictError
from rerank_plugins.scoring import Score
from rerank_plugins.testing import FunctionScorer, make_modernbert_checkpoint


@pytest.fixture()
def one_thread() -> Iterator[None]:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def length(query: str, document: str) -> float:
    return float(len(document))


def rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "query": f"q{i % 3}", "text": "word " * (i % 7)} for i in range(n)]


def write_jsonl(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def errors_of(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((out / "_errors").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


# 1. --resume refuses another model or other options, and accepts another spelling.


def test_resume_with_another_checkpoint_is_refused_naming_what_changed(
    tmp_path: Path, modernbert_dir: Path, one_thread: None
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(6)])
    other = make_modernbert_checkpoint(tmp_path / "other", seed=7)
    out = tmp_path / "out"
    options = {"device": "cpu"}
    score_file(source, out, model=modernbert_dir, model_options=options, progress=False)
    (out / "_SUCCESS").unlink()
    with pytest.raises(ResumeConflictError, match=r"model\.sha256") as caught:
        score_file(source, out, model=other, model_options=options, resume=True, progress=False)
    assert "model.files.model.safetensors" in caught.value.changed
    with pytest.raises(ResumeConflictError, match=r"model\.options\.output"):
        score_file(
            source,
            out,
            model=modernbert_dir,
            model_options={**options, "output": "logit"},
            resume=True,
            progress=False,
        )


def test_resume_accepts_the_same_checkpoint_and_input_by_another_spelling(
    tmp_path: Path, modernbert_dir: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(6)])
    out = tmp_path / "out"
    score_file(source, out, model=modernbert_dir, model_options={"device": "cpu"}, progress=False)
    (out / "_SUCCESS").unlink()
    (tmp_path / "link").symlink_to(modernbert_dir)
    copy = tmp_path / "copy.jsonl"
    shutil.copy(source, copy)
    os.utime(copy, (1, 1))  # another path and mtime, the same content
    monkeypatch.chdir(tmp_path)
    summary = score_file(
        "copy.jsonl",
        out,
        model="link",
        model_options={"device": "cpu", "dtype": "float32"},  # what "auto" gives on a CPU
        resume=True,
        progress=False,
    )
    assert summary.rows == 6


def test_resume_refuses_an_input_with_other_content_of_the_same_size(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(6)])
    out = tmp_path / "out"
    score_file(source, out, model=FunctionScorer(length), progress=False)
    (out / "_SUCCESS").unlink()
    text = source.read_text().replace("r1", "x1")
    source.write_text(text)
    with pytest.raises(ResumeConflictError, match="input"):
        score_file(source, out, model=FunctionScorer(length), resume=True, progress=False)


def test_the_command_refuses_a_changed_resume_in_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(4)])
    out = tmp_path / "out"
    score_file(source, out, model=FunctionScorer(length), progress=False)
    (out / "_SUCCESS").unlink()
    source.write_text(source.read_text() + json.dumps(rows(5)[-1]) + "\n")
    argv = ["score", str(source), "-o", str(out), "--resume", "--no-progress"]
    assert main(argv, stdout=io.StringIO()) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "input" in err


# 2. Shards edited or truncated after they were written.


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("after_success", [False, True])
def test_an_edited_or_truncated_shard_is_detected_and_recomputed_on_resume(
    tmp_path: Path, fmt: str, after_success: bool, caplog: pytest.LogCaptureFixture
) -> None:
    data = rows(30)
    if fmt == "jsonl":
        source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in data])
    else:
        source = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(data), source)
    out = tmp_path / "out"
    score_file(source, out, model=CountingScorer(), shard_rows=10, progress=False)
    reference = {p.name: p.read_bytes() for p in out.glob("part-*")}
    edited, cut = sorted(out.glob("part-*"))[:2]
    edited.write_bytes(edited.read_bytes().replace(b"r1", b"r9") + b" ")
    cut.write_bytes(cut.read_bytes()[:-20])
    if not after_success:
        (out / "_SUCCESS").unlink()
    scorer = CountingScorer()
    summary = score_file(source, out, model=scorer, shard_rows=10, resume=True, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == reference
    assert scorer.documents == 20  # the two bad shards only
    assert summary.extra["shards_recomputed"] == [0, 1]
    assert "recomputed" in caplog.text and edited.name in caplog.text
    assert summary.rows == 30
    again = score_file(source, out, model=scorer, shard_rows=10, resume=True, progress=False)
    assert again.rows == 30 and scorer.documents == 20


class CountingScorer(FunctionScorer):
    def __init__(self) -> None:
        super().__init__(length)
        self.documents = 0

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        self.documents += len(documents)
        return super().score(query, documents)


# 3. One bad input row goes to the errors file; the run goes on; --resume too.

HOSTILE = {
    "huge number": '{"query": "q", "text": "t", "n": ' + "9" * 5000 + "}",
    "deep nesting": '{"query": "q", "text": "t", "n": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "lone surrogate": '{"query": "q", "text": "a \\ud800 b"}',
    "surrogate elsewhere": '{"query": "q", "text": "t", "id": "\\udc00"}',
    "null query": '{"query": null, "text": "t"}',
    "number text": '{"query": "q", "text": 5}',
    "NaN": '{"query": "q", "text": "t", "n": NaN}',
    "Infinity": '{"query": "q", "text": "t", "n": -Infinity}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_row_is_an_error_row_and_the_run_goes_on(tmp_path: Path, name: str) -> None:
    good = json.dumps({"query": "q", "text": "fine"})
    source = write_jsonl(tmp_path / "in.jsonl", [good, HOSTILE[name], good])
    out = tmp_path / "out"
    summary = score_file(source, out, model=FunctionScorer(length), shard_rows=2, progress=False)
    assert summary.rows == 3 and summary.errors == 1
    written = [
        json.loads(x) for p in sorted(out.glob("part-*")) for x in p.read_text().splitlines()
    ]
    assert [r["error"] is None for r in written] == [True, False, True]
    assert [e["row"] for e in errors_of(out)] == [1]
    (out / "_SUCCESS").unlink()
    (out / "part-000001.jsonl").unlink()
    assert (
        score_file(source, out, model=FunctionScorer(length), shard_rows=2, resume=True).rows == 3
    )


def test_a_line_over_the_cap_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    good = json.dumps({"query": "q", "text": "fine"})
    huge = json.dumps({"query": "q", "text": "x" * 3_000_000})
    source = write_jsonl(tmp_path / "in.jsonl", [good, huge, good])
    out = tmp_path / "out"
    summary = score_file(
        source, out, model=FunctionScorer(length), max_line_bytes=1_000_000, progress=False
    )
    assert summary.rows == 3 and summary.errors == 1
    (error,) = errors_of(out)
    assert error["row"] == 1 and "line 2" in error["error"] and "1000000" in error["error"]


# 4. NaN and inf scores are row errors, never score: NaN with error: null.


def test_non_finite_scores_are_row_errors(tmp_path: Path) -> None:
    def bad(query: str, document: str) -> float:
        return {"nan": math.nan, "inf": math.inf}.get(document, 1.0)

    source = tmp_path / "in.parquet"
    data = [{"query": "q", "text": t} for t in ("ok", "nan", "inf", "ok")]
    data.append({"query": "q", "text": "ok"})
    pq.write_table(pa.Table.from_pylist(data), source)
    out = tmp_path / "out"
    summary = score_file(source, out, model=FunctionScorer(bad), progress=False)
    table = pq.read_table(out).to_pylist()
    assert [r["score"] for r in table] == [1.0, None, None, 1.0, 1.0]
    assert [r["error"] is not None for r in table] == [False, True, True, False, False]
    assert "InvalidScoreError" in table[1]["error"]
    assert summary.errors == 2


def test_a_list_row_with_a_nan_score_is_an_error_row(tmp_path: Path) -> None:
    def bad(query: str, document: str) -> float:
        return math.nan if document == "nan" else 1.0

    source = write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps({"query": "q", "text": ["ok", "nan"]}),
            json.dumps({"query": "q", "text": ["ok"]}),
        ],
    )
    out = tmp_path / "out"
    score_file(source, out, model=FunctionScorer(bad), progress=False)
    written = [json.loads(x) for x in (out / "part-000000.jsonl").read_text().splitlines()]
    assert written[0]["score"] is None and "[1]" in written[0]["error"]
    assert written[1]["score"] == [1.0]


# 5. No credential in any output file.


def test_url_credentials_and_query_keys_are_in_no_output_file(tmp_path: Path) -> None:
    from rerank_plugins.remote.retry import RetryPolicy

    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(3)])
    out = tmp_path / "out"
    url = "http://alice:hunter2secret@127.0.0.1:9/v1/rerank?api_key=querysecret1"
    with pytest.raises(EndpointError):  # nothing listens on port 9: the run stops
        score_file(
            source,
            out,
            model=url,
            model_options={"retry": RetryPolicy(max_retries=0), "timeout": 2.0},
            progress=False,
        )
    text = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert "_manifest.json" in {p.name for p in out.iterdir()}
    for secret in ("hunter2secret", "querysecret1", "alice"):
        assert secret not in text


# 6. Summaries after a resume count the whole output.


def test_a_resumed_summary_counts_the_whole_output_and_each_run(tmp_path: Path) -> None:
    data = rows(40)
    data[3]["text"] = None  # one error row in the first run's part
    data[33]["text"] = None  # one in the second's
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in data])
    out = tmp_path / "out"
    first = score_file(source, out, model=FunctionScorer(length), shard_rows=10, progress=False)
    for name in ("part-000002.jsonl", "part-000003.jsonl", "_SUCCESS"):
        (out / name).unlink()
    (out / "_errors" / "part-000003.jsonl").unlink()
    summary = score_file(
        source, out, model=FunctionScorer(length), shard_rows=10, resume=True, progress=False
    )
    assert (summary.rows, summary.errors, summary.tokens) == (40, 2, first.tokens)
    assert summary.extra["rows_this_run"] == 20
    assert len(summary.extra["runs"]) == 2
    assert summary.seconds == pytest.approx(sum(r["seconds"] for r in summary.extra["runs"]))
    on_disk = json.loads((out / "_SUCCESS").read_text())
    assert (on_disk["rows"], on_disk["errors"], on_disk["shards"]) == (40, 2, 4)


def test_first_run_refuses_a_changed_option_named_before_loading(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [json.dumps(r) for r in rows(4)])
    score_file(source, tmp_path / "out", model=FunctionScorer(length), progress=False)
    with pytest.raises(InvalidInputError, match="not empty"):
        score_file(source, tmp_path / "out", model=FunctionScorer(length), progress=False)
