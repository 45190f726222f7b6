"""Calibration: Platt parameters recovered, ECE small after, the wrong file refused."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import httpx
import pytest

from rerank_plugins import load_scorer, rank
from rerank_plugins.calibration import (
    CalibratedScorer,
    Calibration,
    calibrate_scorer,
    load_calibration,
)
from rerank_plugins.cli import main
from rerank_plugins.errors import CalibrationMismatchError, EvaluationDataError, ScoringError
from rerank_plugins.evaluation.calibration import (
    LabelledPair,
    expected_calibration_error,
    fit_calibration,
    read_pairs,
)
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.testing import WORDS, FunctionScorer, make_modernbert_checkpoint
from rerank_plugins.testing.fake_server import FakeRerankServer

TRUE_A, TRUE_B = 6.0, -3.5


def _clients() -> dict[str, object]:
    transport = httpx.MockTransport(FakeRerankServer("cohere").handle)
    return {
        "client": httpx.Client(transport=transport),
        "async_client": httpx.AsyncClient(transport=transport),
    }


def _fake_scorer(url: str = "http://fake.test") -> RemoteScorer:
    return RemoteScorer(url, **_clients())  # type: ignore[arg-type]


def _synthetic_pairs(
    scorer: RemoteScorer, n_queries: int = 120, per_query: int = 30
) -> list[LabelledPair]:
    """Labels drawn from sigmoid(TRUE_A * s + TRUE_B), s the fake server's score."""
    rng = random.Random(7)
    pairs = []
    for _ in range(n_queries):
        query = " ".join(rng.sample(WORDS[:40], 3))
        documents = [" ".join(rng.sample(WORDS[:40], rng.randint(1, 6))) for _ in range(per_query)]
        for document, score in zip(documents, scorer.score(query, documents), strict=True):
            p = 1 / (1 + math.exp(-(TRUE_A * score.value + TRUE_B)))
            pairs.append(LabelledPair(query, document, int(rng.random() < p)))
    return pairs


def test_calibrate_recovers_known_platt_parameters_on_the_fake_server() -> None:
    scorer = _fake_scorer()
    pairs = _synthetic_pairs(scorer)
    cal, held_out = fit_calibration(scorer, pairs, holdout=0.3, seed=1)
    assert cal.a == pytest.approx(TRUE_A, abs=0.8)
    assert cal.b == pytest.approx(TRUE_B, abs=0.5)
    assert cal.fit["ece_after"] < 0.05
    assert cal.fit["ece_before"] > cal.fit["ece_after"]  # the server's own "probability"
    assert cal.model == {"endpoint": "http://fake.test/rerank", "dialect": "cohere", "model": None}
    assert cal.mode["raw_kind"] == "probability"
    assert len(held_out["labels"]) == cal.fit["held_out"] == round(len(pairs) * 0.3)


def test_a_saved_calibration_gives_probabilities_and_a_portable_threshold(tmp_path: Path) -> None:
    scorer = _fake_scorer()
    cal, _ = fit_calibration(scorer, _synthetic_pairs(scorer, 40, 20))
    cal.save(tmp_path / "cal.json")
    again = load_calibration(tmp_path / "cal.json")
    assert again == cal
    wrapped = calibrate_scorer(_fake_scorer(), again)
    docs = ["w1 w2 w3", "w39", "w1"]
    raw = scorer.score("w1 w2 w3", docs)
    scores = wrapped.score("w1 w2 w3", docs)
    assert [s.kind for s in scores] == ["probability"] * 3
    for r, s in zip(raw, scores, strict=True):
        assert s.value == pytest.approx(1 / (1 + math.exp(-(cal.a * r.value + cal.b))))
    kept = rank(scores, score_threshold=0.5)
    assert all(r.score.value >= 0.5 for r in kept)


async def test_the_async_form_is_calibrated_too() -> None:
    scorer = _fake_scorer()
    cal = Calibration(a=2.0, b=-1.0, model={}, mode={"raw_kind": "probability"})
    wrapped = CalibratedScorer(scorer, cal)
    docs = ["w1 w2", "w3"]
    assert [s.value for s in await wrapped.ascore("w1", docs)] == [
        s.value for s in wrapped.score("w1", docs)
    ]


def test_a_scorer_giving_another_kind_of_score_is_refused() -> None:
    cal = Calibration(a=1.0, b=0.0, model={}, mode={"raw_kind": "logit"})
    wrapped = CalibratedScorer(FunctionScorer(lambda q, d: 0.5, kind="probability"), cal)
    with pytest.raises(ScoringError, match="calibration is for logit scores"):
        wrapped.score("q", ["d"])


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cal")
    return (
        make_modernbert_checkpoint(root / "a", seed=0),
        make_modernbert_checkpoint(root / "b", seed=1),
    )


def _pairs_file(path: Path) -> Path:
    rng = random.Random(3)
    lines = []
    for i in range(60):
        query = " ".join(rng.sample(WORDS[:20], 2))
        document = " ".join(rng.sample(WORDS[:20], 4))
        lines.append(json.dumps({"query": query, "document": document, "label": i % 2}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_file_made_for_another_endpoint_or_model_name_is_refused(tmp_path: Path) -> None:
    scorer = _fake_scorer()
    cal, _ = fit_calibration(scorer, _synthetic_pairs(scorer, 30, 20))
    cal.save(tmp_path / "cal.json")
    same = load_scorer("http://fake.test", calibration=tmp_path / "cal.json", **_clients())
    assert isinstance(same, CalibratedScorer)
    with pytest.raises(CalibrationMismatchError, match="made for model"):
        load_scorer("http://other.test", calibration=tmp_path / "cal.json", **_clients())
    with pytest.raises(CalibrationMismatchError, match="made for model"):
        load_scorer("http://fake.test", calibration=tmp_path / "cal.json", model="m2", **_clients())
    with pytest.raises(CalibrationMismatchError, match="made for an endpoint"):
        load_scorer("./some-checkpoint", calibration=tmp_path / "cal.json")


@pytest.mark.slow
def test_calibrate_command_and_a_mismatched_file_is_refused(
    two_checkpoints: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = two_checkpoints
    out = tmp_path / "a.json"
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    code = main(
        [
            "calibrate",
            "--pairs",
            str(pairs),
            "--model",
            str(a),
            "-o",
            str(out),
            "--plot",
            str(tmp_path / "rel.png"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == {"output": "logit", "dtype": "float32", "raw_kind": "logit"}
    assert (tmp_path / "rel.png").stat().st_size > 1000
    calibrated = load_scorer(a, calibration=out)
    assert {s.kind for s in calibrated.score("w1", ["w2", "w3"])} == {"probability"}
    with pytest.raises(CalibrationMismatchError, match="made for model"):
        load_scorer(b, calibration=out)  # another checkpoint, same config
    with pytest.raises(CalibrationMismatchError, match=r"another mode: \['max_length'\]"):
        load_scorer(a, calibration=out, max_length=32)
    with pytest.raises(CalibrationMismatchError, match=r"another mode: \['output'\]"):
        load_scorer(a, calibration=out, output="probability")
    with pytest.raises(CalibrationMismatchError, match="made for a local checkpoint"):
        load_scorer("http://127.0.0.1:9/", calibration=out)
    # the command line refuses it too, with the typed error's message
    assert main(["rerank", "--model", str(b), "--calibration", str(out), "q", "d"]) == 2
    assert "made for model" in capsys.readouterr().err


def test_a_file_that_is_no_calibration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(CalibrationMismatchError, match="not a calibration file"):
        load_calibration(tmp_path / "x.json")
    with pytest.raises(CalibrationMismatchError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")


def test_calibration_reaches_the_langchain_adapter(tmp_path: Path) -> None:
    langchain = pytest.importorskip("rerank_plugins.langchain")
    scorer = _fake_scorer()
    cal, _ = fit_calibration(scorer, _synthetic_pairs(scorer, 30, 20))
    cal.save(tmp_path / "cal.json")
    encoder = langchain.CrossEncoder(
        model="http://fake.test",
        model_kwargs={"calibration": tmp_path / "cal.json", **_clients()},
    )
    assert isinstance(encoder.scorer, CalibratedScorer)
    assert all(0.0 <= p <= 1.0 for p in encoder.score([("w1 w2", "w1"), ("w1", "w5 w6")]))


def test_labelled_pairs_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "q", "document": "d", "label": 1}\n{"query": "q", "label": 0}\n')
    with pytest.raises(EvaluationDataError, match=r"p.jsonl:2: needs string"):
        read_pairs(path)
    path.write_text('{"query": "q", "document": "d", "label": 0.5}\n')
    with pytest.raises(EvaluationDataError, match=r":1: 'label' must be 0 or 1"):
        read_pairs(path)


def test_fitting_needs_both_labels() -> None:
    scorer = FunctionScorer(lambda q, d: float(len(d)))
    pairs = [LabelledPair("q", "d" * i, 1) for i in range(1, 20)]
    with pytest.raises(EvaluationDataError, match="both labels"):
        fit_calibration(scorer, pairs)


def test_expected_calibration_error_by_hand() -> None:
    # bin [0.9, 1.0): p=0.95 twice, one positive -> |0.5 - 0.95| * 2/4; bin [0.1,0.2): 0.1 vs 0
    assert expected_calibration_error([0.95, 0.95, 0.1, 0.1], [1, 0, 0, 0]) == pytest.approx(
        0.45 * 0.5 + 0.1 * 0.5
    )


@pytest.mark.parametrize("command", ["rerank", "serve", "score"])
def test_every_model_command_takes_calibration(command: str) -> None:
    from rerank_plugins.cli import _parser
    from rerank_plugins.cli.model_options import model_options
    from rerank_plugins.cli.score import score_options

    tail = {"rerank": ["q", "d"], "serve": [], "score": ["in.jsonl", "-o", "out"]}[command]
    args = _parser().parse_args([command, "--model", "ckpt", "--calibration", "c.json", *tail])
    options = score_options(args) if command == "score" else model_options(args)
    assert options["calibration"] == "c.json"


async def test_the_server_serves_calibrated_probabilities(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from rerank_plugins.serve import create_app

    scorer = _fake_scorer()
    cal, _ = fit_calibration(scorer, _synthetic_pairs(scorer, 30, 20))
    cal.save(tmp_path / "cal.json")
    calibrated = load_scorer("http://fake.test", calibration=tmp_path / "cal.json", **_clients())
    app = create_app(calibrated, warmup=False)
    documents = ["w1 w2 w3", "w30", "w1"]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        answer = await client.post("/v1/rerank", json={"query": "w1 w2", "documents": documents})
    await app.state.batcher.stop()
    got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
    expected = [s.value for s in calibrated.score("w1 w2", documents)]
    assert got == pytest.approx(dict(enumerate(expected)))
