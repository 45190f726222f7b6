"""``rerank-plugins score``: every row out once, in order, in shards that survive a kill."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_plugins import load_scorer
from rerank_plugins.bulk import BulkInterrupted, score_file, score_table
from rerank_plugins.cli import _parser, main
from rerank_plugins.errors import EndpointError, InputTooLongError, InvalidInputError
from rerank_plugins.scoring import Score, check_inputs
from rerank_plugins.testing import FunctionScorer, random_text


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread: on the shared 2-core CI machine, two threads fight the other jobs
    for cores and a tiny model slows down a hundredfold."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def overlap(query: str, document: str) -> float:
    words = document.split()
    return sum(w in query.split() for w in words) / (1 + len(words))


def pairs(n: int, *, seed: int = 0, queries: int = 7, max_words: int = 30) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": f"row-{i}",
            "query": f"w{i % queries} w{(i * 3) % queries + 10}",
            "text": random_text(rng, rng.randint(0, max_words)),
        }
        for i in range(n)
    ]


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 50) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def errors_of(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted((out / "_errors").glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_every_row_is_written_once_in_input_order_with_its_score(tmp_path: Path) -> None:
    rows = pairs(230)
    source = write_parquet(tmp_path / "in.parquet", rows, row_group_size=37)
    scorer = FunctionScorer(overlap)
    summary = score_file(source, tmp_path / "out", model=scorer, shard_rows=50, progress=False)
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts] == [50, 50, 50, 50, 30]
    out = pq.read_table(tmp_path / "out").to_pylist()
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["text"] for r in out] == [r["text"] for r in rows]
    assert [r["score"] for r in out] == [overlap(r["query"], r["text"]) for r in rows]
    assert all(r["error"] is None and r["truncated"] is False for r in out)
    assert (summary.rows, summary.errors, summary.shards) == (230, 0, 5)
    # Pairs that share a query are scored in one call per shard, not one call per row.
    assert scorer.calls == sum(
        len({r["query"] for r in rows[i : i + 50]}) for i in (0, 50, 100, 150, 200)
    )


def test_local_model_scores_equal_scorer_score(
    tmp_path: Path, modernbert_dir: Path, one_thread: None
) -> None:
    rows = pairs(120, queries=3, max_words=80)
    source = write_parquet(tmp_path / "in.parquet", rows)
    score_file(
        source,
        tmp_path / "out",
        model=str(modernbert_dir),
        model_options={"device": "cpu"},
        shard_rows=40,
        keep_text=False,
        progress=False,
    )
    out = pq.read_table(tmp_path / "out")
    assert out.column_names == ["id", "score", "tokens", "truncated", "error"]
    scorer = load_scorer(str(modernbert_dir), device="cpu")
    expected: dict[int, Score] = {}
    for query in {r["query"] for r in rows}:  # one call per query: the rows batch differently
        group = [i for i, r in enumerate(rows) if r["query"] == query]
        scores = scorer.score(query, [rows[i]["text"] for i in group])
        expected.update(zip(group, scores, strict=True))
    for i, got in enumerate(out.to_pylist()):
        assert got["score"] == pytest.approx(expected[i].value, abs=1e-6)
        assert (got["tokens"], got["truncated"]) == (expected[i].tokens, False)


def test_list_rows_get_one_score_per_document(tmp_path: Path) -> None:
    lines = [
        json.dumps({"qid": 1, "query": "w1 w2", "text": ["w1", "w3 w4", ""]}),
        json.dumps({"qid": 2, "query": "w5", "text": ["w5 w5"]}),
        json.dumps({"qid": 3, "query": "w6", "text": []}),
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    score_file(source, tmp_path / "out", model=FunctionScorer(overlap), progress=False)
    out = [json.loads(x) for x in (tmp_path / "out" / "part-000000.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in out] == [1, 2, 3]
    assert out[0]["score"] == [overlap("w1 w2", d) for d in ["w1", "w3 w4", ""]]
    assert out[1]["score"] == [overlap("w5", "w5 w5")]
    assert out[2]["score"] == [] and out[2]["error"] is None
    # A Parquet list column gives list columns.
    table = pa.Table.from_pylist([json.loads(x) for x in lines])
    scored = score_table(FunctionScorer(overlap), table)
    assert scored.schema.field("score").type == pa.list_(pa.float64())
    assert scored.column("score").to_pylist() == [r["score"] for r in out]


def test_bad_rows_go_to_the_errors_file_with_the_reason(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": 0, "query": "w1", "text": "w1 w2"}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"id": 3, "query": "w1"}),
        json.dumps({"id": 4, "query": "  ", "text": "w1"}),
        json.dumps({"id": 5, "query": "w1", "text": None}),
        "",
        json.dumps({"id": 6, "query": "w1", "text": ["w1", 7]}),
        json.dumps({"id": 7, "query": "w1", "text": "w1"}),
    ]
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    summary = score_file(source, tmp_path / "out", model=FunctionScorer(overlap), progress=False)
    out = [json.loads(x) for x in (tmp_path / "out" / "part-000000.jsonl").read_text().splitlines()]
    assert len(out) == 8  # every non-blank line, in order
    assert [r.get("id") for r in out] == [0, None, None, 3, 4, 5, 6, 7]
    assert [r["score"] is None for r in out] == [False, True, True, True, True, True, True, False]
    errors = errors_of(tmp_path / "out")
    assert [e["row"] for e in errors] == [1, 2, 3, 4, 5, 6]
    reasons = [e["error"] for e in errors]
    assert "line 2 is not valid JSON" in reasons[0]
    assert "JSON list, not an object" in reasons[1]
    assert "has no field ['text']" in reasons[2]
    assert "query is empty" in reasons[3]
    assert "not str (NoneType)" in reasons[4]
    assert "indices [1] are not str (int)" in reasons[5]
    assert summary.errors == 6 and summary.rows == 8


class LengthLimitedScorer:
    """Refuses documents over ``limit`` words, as a scorer with overflow="error" does."""

    def __init__(self, limit: int, *, fail_after: int | None = None) -> None:
        self.limit = limit
        self.fail_after = fail_after
        self.calls = 0

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise EndpointError("the endpoint went away")
        long = [i for i, d in enumerate(docs) if len(d.split()) > self.limit]
        if long:
            raise InputTooLongError(f"documents {long} exceed the window", indices=long)
        return [Score(overlap(query, d), "logit", tokens=len(d.split())) for d in docs]

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        return self.score(query, documents)


def test_a_row_over_the_window_is_recorded_and_its_neighbours_scored(tmp_path: Path) -> None:
    rows = pairs(60, queries=2, max_words=12)
    source = write_parquet(tmp_path / "in.parquet", rows)
    score_file(source, tmp_path / "out", model=LengthLimitedScorer(10), progress=False)
    out = pq.read_table(tmp_path / "out").to_pylist()
    long = [i for i, r in enumerate(rows) if len(r["text"].split()) > 10]
    assert long and len(long) < len(rows)
    assert [i for i, r in enumerate(out) if r["score"] is None] == long
    assert [e["row"] for e in errors_of(tmp_path / "out")] == long
    assert all(e["error"].startswith("InputTooLongError") for e in errors_of(tmp_path / "out"))
    assert all(
        "text" not in e and e["id"] == rows[e["row"]]["id"] for e in errors_of(tmp_path / "out")
    )


def test_a_failure_that_is_not_the_rows_stops_the_run_and_resume_finishes_it(
    tmp_path: Path,
) -> None:
    rows = pairs(200, queries=1)
    source = write_parquet(tmp_path / "in.parquet", rows)
    score_file(
        source, tmp_path / "ref", model=LengthLimitedScorer(1000), shard_rows=30, progress=False
    )
    with pytest.raises(EndpointError):
        score_file(
            source,
            tmp_path / "out",
            model=LengthLimitedScorer(1000, fail_after=3),
            shard_rows=30,
            progress=False,
        )
    assert len(list((tmp_path / "out").glob("part-*"))) == 3
    with pytest.raises(InvalidInputError, match="not empty"):
        score_file(source, tmp_path / "out", model=LengthLimitedScorer(1000), shard_rows=30)
    scorer = LengthLimitedScorer(1000)
    summary = score_file(
        source, tmp_path / "out", model=scorer, shard_rows=30, resume=True, progress=False
    )
    assert scorer.calls == 4  # shards 3..6 only
    assert (summary.shards_resumed, summary.shards, summary.rows) == (3, 7, 200)
    assert pq.read_table(tmp_path / "out").equals(pq.read_table(tmp_path / "ref"))


def test_resume_refuses_a_different_input_or_shard_size(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(40))
    score_file(source, tmp_path / "out", model=FunctionScorer(overlap), shard_rows=10)
    with pytest.raises(InvalidInputError, match="shard_rows"):
        score_file(
            source, tmp_path / "out", model=FunctionScorer(overlap), shard_rows=20, resume=True
        )
    write_parquet(source, pairs(41))
    with pytest.raises(InvalidInputError, match="input_size"):
        score_file(
            source, tmp_path / "out", model=FunctionScorer(overlap), shard_rows=10, resume=True
        )


def test_missing_or_clashing_columns_are_named(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(5))
    with pytest.raises(InvalidInputError, match="'passage'"):
        score_file(source, tmp_path / "a", model=FunctionScorer(overlap), document_column="passage")
    rows = [{**r, "score": 1.0} for r in pairs(5)]
    with pytest.raises(InvalidInputError, match="already has column"):
        score_file(
            write_parquet(tmp_path / "s.parquet", rows),
            tmp_path / "b",
            model=FunctionScorer(overlap),
        )
    with pytest.raises(InvalidInputError, match="unknown input format"):
        score_file(tmp_path / "in.csv", tmp_path / "c", model=FunctionScorer(overlap))


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_killed_command_resumes_to_exactly_the_uninterrupted_rows(
    tmp_path: Path, modernbert_dir: Path, one_thread: None
) -> None:
    rows = pairs(400, queries=2, max_words=20)
    source = write_parquet(tmp_path / "in.parquet", rows, row_group_size=32)
    common = ["--model", str(modernbert_dir), "--device", "cpu", "--shard-rows", "10"]
    out = io.StringIO()
    assert (
        main(
            ["score", str(source), "-o", str(tmp_path / "ref"), *common, "--no-progress"],
            stdout=out,
        )
        == 0
    )
    assert json.loads(out.getvalue())["rows"] == 400

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerank_plugins", "score", str(source), "-o", str(killed), *common],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if len(list(killed.glob("part-*.parquet"))) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "_SUCCESS").exists()
    done = len(list(killed.glob("part-*.parquet")))
    assert 2 <= done < 40

    out = io.StringIO()
    argv = ["score", str(source), "-o", str(killed), *common, "--resume", "--no-progress"]
    assert main(argv, stdout=out) == 0
    summary = json.loads(out.getvalue())
    assert summary["shards_resumed"] >= done and summary["rows"] == 400
    assert not list(killed.glob(".*.tmp"))
    resumed, reference = pq.read_table(killed), pq.read_table(tmp_path / "ref")
    assert resumed.column("id").to_pylist() == [r["id"] for r in rows]
    assert resumed.equals(reference)


def test_the_command_reports_bad_options_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(3))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("")
    assert main(["score", str(source), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_importing_the_package_and_cli_imports_no_pyarrow_tqdm_or_ray() -> None:
    code = (
        "import sys, rerank_plugins, rerank_plugins.cli, rerank_plugins.bulk\n"
        "print([m for m in ('pyarrow', 'tqdm', 'ray') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- issue 20, item 19: the score command's failures, each one line -------------------------


class InterruptingScorer(FunctionScorer):
    """Scores ``calls_before`` calls, then raises KeyboardInterrupt (Ctrl-C mid-run)."""

    def __init__(self, calls_before: int) -> None:
        super().__init__(overlap)
        self.calls_before = calls_before

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        if self.calls >= self.calls_before:
            raise KeyboardInterrupt
        return super().score(query, documents)


def test_ctrl_c_says_how_many_shards_are_written_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"query": "w1", "text": f"w{i}"} for i in range(40)]  # one query: a call per shard
    source = write_parquet(tmp_path / "in.parquet", rows)
    scorers = [InterruptingScorer(calls_before=2), InterruptingScorer(calls_before=100)]
    monkeypatch.setattr("rerank_plugins.bulk.files.load_scorer", lambda *a, **k: scorers.pop(0))
    argv = ["score", str(source), "-o", str(tmp_path / "out"), "--shard-rows", "10"]
    assert main([*argv, "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: 2 of 4 shards written; rerun with --resume"
    out = io.StringIO()
    assert main([*argv, "--resume", "--no-progress"], stdout=out) == 0
    assert json.loads(out.getvalue())["rows"] == 40


def test_score_file_raises_a_keyboard_interrupt_that_counts_the_shards(tmp_path: Path) -> None:
    source = write_parquet(tmp_path / "in.parquet", [{"query": "q", "text": "d"}] * 30)
    with pytest.raises(KeyboardInterrupt) as caught:
        score_file(
            source, tmp_path / "out", model=InterruptingScorer(1), shard_rows=10, progress=False
        )
    assert isinstance(caught.value, BulkInterrupted)
    assert (caught.value.shards_written, caught.value.shards_total) == (1, 3)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("rerank-plugins: error: "), err
    return err


def test_a_corrupt_parquet_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.parquet"
    source.write_bytes(b"PAR1 this is not a parquet file")
    assert main(["score", str(source), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "not a readable Parquet file" in one_line_error(capsys)


def test_a_dangling_output_symlink_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(3))
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    assert main(["score", str(source), "-o", str(link), "--no-progress"]) == 2
    assert "which does not exist" in one_line_error(capsys)


def test_an_output_that_cannot_be_created_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(3))
    # /proc refuses new directories even to root (a chmod-ed folder would not stop root).
    argv = ["score", str(source), "-o", "/proc/rerank-plugins-out", "--no-progress"]
    assert main(argv) == 2
    assert "/proc/rerank-plugins-out" in one_line_error(capsys)


def test_a_full_disk_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(3))

    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "x"))

    monkeypatch.setattr("rerank_plugins.bulk.files.write_parquet_shard", no_space)
    monkeypatch.setattr(
        "rerank_plugins.bulk.files.load_scorer", lambda *a, **k: FunctionScorer(overlap)
    )
    assert main(["score", str(source), "-o", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "No space left on device" in one_line_error(capsys)


def test_verbose_and_progress_work_after_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_parquet(tmp_path / "in.parquet", pairs(5))
    monkeypatch.setattr(
        "rerank_plugins.bulk.files.load_scorer", lambda *a, **k: FunctionScorer(overlap)
    )
    out = io.StringIO()
    argv = ["score", str(source), "-o", str(tmp_path / "out"), "-v", "--no-progress"]
    assert main(argv, stdout=out) == 0
    assert json.loads(out.getvalue())["rows"] == 5
    args = _parser().parse_args(["score", "in.parquet", "-o", "out", "--progress", "-v"])
    assert args.progress is True and args.verbose is True
