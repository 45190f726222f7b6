"""BEIR/TREC inputs: read as written, and every malformed or inconsistent input refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rerank_plugins.errors import EvaluationDataError, InvalidInputError
from rerank_plugins.evaluation.data import (
    check_run,
    load_collection,
    ordered,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
)
from rerank_plugins.testing import EVAL_FIXTURE_SIZE, write_eval_fixture


def test_the_fixture_is_a_beir_collection_of_the_announced_size(fixture_dir: Path) -> None:
    c = load_collection(fixture_dir)
    assert len(c.queries) == EVAL_FIXTURE_SIZE["queries"]
    assert len(c.corpus) == EVAL_FIXTURE_SIZE["documents"]
    assert set(c.judged_queries) == set(c.queries)
    grades = {g for judged in c.qrels.values() for g in judged.values()}
    assert grades == {0, 1, 2}


def test_the_fixture_is_deterministic(tmp_path: Path, fixture_dir: Path) -> None:
    again = write_eval_fixture(tmp_path / "again")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "bm25-like.run"):
        assert (again / name).read_bytes() == (fixture_dir / name).read_bytes()


def test_beir_and_trec_qrels_read_the_same(fixture_dir: Path) -> None:
    assert read_qrels(fixture_dir / "qrels" / "test.tsv") == read_qrels(fixture_dir / "qrels.trec")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', r"corpus.jsonl:2: not valid JSON"),
        ('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', r":2: duplicate document id"),
        ('{"_id": "", "text": "x"}\n', r":1: '_id' must be a non-empty string"),
        ('{"_id": "a", "text": 3}\n', r":1: 'text' must be"),
        ('["a"]\n', r":1: expected a JSON object"),
        ("\n\n", r"holds no documents"),
    ],
)
def test_a_malformed_corpus_is_refused_with_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(EvaluationDataError, match=message):
        read_corpus(_write(tmp_path / "corpus.jsonl", text))


def test_titles_are_joined_to_the_text(tmp_path: Path) -> None:
    corpus = read_corpus(
        _write(
            tmp_path / "c.jsonl",
            '{"_id": "a", "title": "T", "text": "x"}\n{"_id": "b", "text": "y"}\n',
        )
    )
    assert corpus == {"a": "T\nx", "b": "y"}
    assert read_queries(_write(tmp_path / "q.jsonl", '{"_id": "q", "text": "z"}\n')) == {"q": "z"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t0\n", r"qrels:3: duplicate judgment"),
        ("query-id\tcorpus-id\tscore\nq1\td1\n", r"qrels:2: expected 3 tab-separated"),
        ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", r"qrels:2: relevance 'high'"),
        ("query-id\tcorpus-id\tscore\n", r"holds no judgments"),
        ("q1 0 d1\n", r"qrels:1: expected 4 fields"),
        ("", r"holds no judgments"),
    ],
)
def test_malformed_qrels_are_refused_with_their_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(EvaluationDataError, match=message):
        read_qrels(_write(tmp_path / "qrels", text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("q1 Q0 d1 1 2.0 t\nq1 Q0 d1 2 1.0 t\n", r"run:2: duplicate row \(q1, d1\)"),
        ("q1 Q0 d1 1 2.0\n", r"run:1: expected 6 fields"),
        ("q1 Q0 d1 one 2.0 t\n", r"run:1: rank 'one'"),
        ("q1 Q0 d1 1 nan t\n", r"run:1: score 'nan' is not finite"),
        ("", r"holds no rows"),
    ],
)
def test_a_malformed_run_is_refused_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(EvaluationDataError, match=message):
        read_run(_write(tmp_path / "run", text))


def test_runs_are_ordered_like_trec_eval_score_then_docid_descending(tmp_path: Path) -> None:
    run = read_run(_write(tmp_path / "run", "q Q0 a 1 1.0 t\nq Q0 c 2 1.0 t\nq Q0 b 3 3.0 t\n"))
    assert run == {"q": [("b", 3.0), ("c", 1.0), ("a", 1.0)]}
    assert ordered({"x": 0.5}) == [("x", 0.5)]


def _beir(tmp_path: Path, qrels: str) -> Path:
    _write(tmp_path / "corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    _write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "x"}\n{"_id": "q2", "text": "y"}\n')
    (tmp_path / "qrels").mkdir(exist_ok=True)
    _write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n" + qrels)
    return tmp_path


def test_qrels_naming_unknown_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(EvaluationDataError, match=r"unknown query ids .*\['q9'\]"):
        load_collection(_beir(tmp_path, "q9\td1\t1\n"))
    with pytest.raises(EvaluationDataError, match=r"unknown document ids .*\['d9'\]"):
        load_collection(_beir(tmp_path, "q1\td9\t1\n"))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EvaluationDataError, match="cannot read"):
        load_collection(tmp_path)
    with pytest.raises(InvalidInputError, match="BEIR directory"):
        load_collection()


def test_a_run_naming_unknown_ids_is_refused(tmp_path: Path) -> None:
    c = load_collection(_beir(tmp_path, "q1\td1\t1\n"))
    with pytest.raises(EvaluationDataError, match=r"the run name 1 unknown document ids"):
        check_run({"q1": [("d7", 1.0)]}, c)
    with pytest.raises(EvaluationDataError, match=r"the run name 1 unknown query ids"):
        check_run({"q7": [("d1", 1.0)]}, c)
    with pytest.raises(EvaluationDataError, match="none of the judged queries"):
        check_run({"q2": [("d1", 1.0)]}, c)


def test_run_queries_are_kept_or_dropped_out_loud(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = load_collection(_beir(tmp_path, "q1\td1\t1\nq2\td2\t1\n"))
    with caplog.at_level(logging.WARNING):
        checked = check_run({"q1": [("d1", 1.0)]}, c)
    assert checked == {"q1": [("d1", 1.0)], "q2": []}  # judged but absent: an empty ranking
    assert "1 judged queries are not in the run" in caplog.text
    caplog.clear()
    c = load_collection(_beir(tmp_path, "q1\td1\t1\n"))
    with caplog.at_level(logging.WARNING):
        checked = check_run({"q1": [("d1", 1.0)], "q2": [("d2", 1.0)]}, c)
    assert checked == {"q1": [("d1", 1.0)]}
    assert "1 queries of the run have no judgments" in caplog.text


def test_queries_without_a_relevant_document_are_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        load_collection(_beir(tmp_path, "q1\td1\t0\nq2\td2\t1\n"))
    assert "1 judged queries have no relevant document" in caplog.text
