"""Ray Data scoring on a local Ray (2 CPUs, no GPU) started once for the module."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from rerank_plugins import load_scorer
from rerank_plugins.bulk import score_file
from rerank_plugins.cli import main
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.ray import score_dataset, serve_app
from rerank_plugins.scoring import Score
from rerank_plugins.testing import FunctionScorer, random_text
from rerank_plugins.testing.fake_server import FakeRerankServer, fake_probability, serve

# Ray's own DataContext warns about its deprecated fields when the context is copied.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.*"),
    pytest.mark.slow,  # a local Ray starts in each test (seconds to a minute)
]

# Fractional CPUs: with two 1-CPU actors on 2 CPUs the read tasks never get a CPU and the
# pipeline deadlocks.
ACTOR_CPUS = 0.5


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread in this process too (the reference scores are computed here)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=256 * 1024**2,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def pairs(n: int, *, queries: int, max_words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": i,
            "query": f"w{i % queries} w{(7 * i) % queries + 100}",
            "text": random_text(rng, rng.randint(0, max_words)),
        }
        for i in range(n)
    ]


def test_score_dataset_equals_scorer_score_row_by_row_with_two_actors(
    local_ray: None, modernbert_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    rows = pairs(5000, queries=25, max_words=12)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet", row_group_size=500)
    ds = ray.data.read_parquet(str(tmp_path / "in.parquet"))  # one file: one block
    scored = score_dataset(
        ds,
        model=str(modernbert_dir),
        device="cpu",
        num_cpus=ACTOR_CPUS,
        concurrency=2,
        batch_size=250,
    )
    out = pa.concat_tables(ray.get(scored.to_arrow_refs())).to_pylist()
    assert sorted(r["id"] for r in out) == list(range(5000))  # none lost, none twice
    scorer = load_scorer(str(modernbert_dir), device="cpu")
    expected: dict[int, Score] = {}
    for query in {r["query"] for r in rows}:
        group = [r["id"] for r in rows if r["query"] == query]
        expected.update(
            zip(group, scorer.score(query, [rows[i]["text"] for i in group]), strict=True)
        )
    for got in out:
        want = expected[got["id"]]
        assert (got["query"], got["text"]) == (rows[got["id"]]["query"], rows[got["id"]]["text"])
        assert got["score"] == pytest.approx(want.value, abs=1e-6)
        assert (got["tokens"], got["truncated"], got["error"]) == (want.tokens, False, None)


def test_each_actor_holds_its_own_scorer_and_bad_rows_keep_their_reason(local_ray: None) -> None:
    # The scorer answers with the id of the process it runs in: two actors, two ids.
    scorer = FunctionScorer(lambda query, document: float(os.getpid()))
    items = [
        {"key": f"k{i}", "query": "w1", "text": None if i % 97 == 0 else "w1"} for i in range(800)
    ]
    ds = ray.data.from_items(items, override_num_blocks=8)
    scored = score_dataset(ds, model=scorer, num_cpus=ACTOR_CPUS, concurrency=2, batch_size=50)
    out = scored.take_all()
    assert sorted(r["key"] for r in out) == sorted(r["key"] for r in items)
    pids = {r["score"] for r in out if r["score"] is not None}
    assert len(pids) == 2 and os.getpid() not in pids
    bad = sorted(r["key"] for r in out if r["error"] is not None)
    assert bad == sorted(f"k{i}" for i in range(0, 800, 97))
    assert all("not str (NoneType)" in r["error"] for r in out if r["error"] is not None)


def test_a_remote_endpoint_scores_from_the_actors(local_ray: None) -> None:
    fake = FakeRerankServer("cohere", record=False)
    httpd = serve(fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        rows = pairs(300, queries=4, max_words=10)
        ds = ray.data.from_items(rows, override_num_blocks=4)
        scored = score_dataset(ds, model=url, num_cpus=0.25, concurrency=2, batch_size=100)
        out = scored.take_all()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(r["id"] for r in out) == list(range(300))
    for r in out:
        assert r["score"] == pytest.approx(fake_probability(r["query"], r["text"]), abs=1e-9)
    assert fake.documents_scored == 300


def test_score_command_with_ray_writes_what_the_single_machine_command_writes(
    local_ray: None, modernbert_dir: Path, tmp_path: Path, one_thread: None
) -> None:
    rng = random.Random(3)
    lines = [
        {"qid": q, "query": f"w{q} w{q + 1}", "text": [random_text(rng, n) for n in range(q % 5)]}
        for q in range(40)
    ]
    lines[7]["query"] = ""
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    model = ["--model", str(modernbert_dir), "--device", "cpu"]
    ray_options = ["--num-cpus", str(ACTOR_CPUS), "--concurrency", "2", "--batch-size", "8"]
    out = io.StringIO()
    argv = ["score", str(source), "-o", str(tmp_path / "ray"), *model, *ray_options, "--ray"]
    assert main(argv, stdout=out) == 0
    summary = json.loads(out.getvalue())
    assert (summary["rows"], summary["errors"]) == (40, 1)
    got = [
        json.loads(line)
        for path in sorted((tmp_path / "ray").glob("*.json*"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert [r["qid"] for r in got] == list(range(40))  # input order kept
    error_file = (tmp_path / "ray" / "_errors" / "errors.jsonl").read_text(encoding="utf-8")
    assert [json.loads(x)["qid"] for x in error_file.splitlines()] == [7]

    score_file(
        source,
        tmp_path / "local",
        model=str(modernbert_dir),
        model_options={"device": "cpu"},
        progress=False,
    )
    local = [
        json.loads(x) for x in (tmp_path / "local" / "part-000000.jsonl").read_text().splitlines()
    ]
    for a, b in zip(got, local, strict=True):
        assert (a["qid"], a["tokens"], a["truncated"], a["error"]) == (
            b["qid"],
            b["tokens"],
            b["truncated"],
            b["error"],
        )
        if b["score"] is None:
            assert a["score"] is None
        else:
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_app_answers_v1_rerank_with_the_local_scorers_scores(
    local_ray: None, modernbert_dir: Path
) -> None:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = serve_app(
            model=str(modernbert_dir),
            model_options={"device": "cpu"},
            model_name="tiny",
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.25},
        )
        serve.run(app, name="rerank", route_prefix="/")
        rng = random.Random(5)
        docs = [random_text(rng, n) for n in (3, 40, 1, 120, 9)]
        url = f"http://127.0.0.1:{port}"
        reply = httpx.post(
            f"{url}/v1/rerank", json={"query": "w1 w2", "documents": docs}, timeout=120
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model"] == "tiny"
        got = {r["index"]: r["relevance_score"] for r in body["results"]}
        expected = load_scorer(str(modernbert_dir), device="cpu").score("w1 w2", docs)
        assert sorted(got) == list(range(len(docs)))
        for i, score in enumerate(expected):
            assert got[i] == pytest.approx(score.value, abs=1e-6)
        # The same API as one server: our own remote client reads it, TEI's path answers.
        remote = load_scorer(url, dialect="cohere").score("w1 w2", docs)
        assert [s.value for s in remote] == pytest.approx([s.value for s in expected], abs=1e-6)
        tei = httpx.post(f"{url}/rerank", json={"query": "w1 w2", "texts": docs}, timeout=120)
        assert tei.status_code == 200 and {r["index"] for r in tei.json()} == set(got)
    finally:
        serve.shutdown()


def test_serve_on_ray_refuses_bad_limits_before_starting_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["serve", "--model", "/no/such/model", "--max-batch-tokens", "0", "--ray"]
    assert main(argv) == 2
    assert "batch-tokens must be positive" in capsys.readouterr().err  # alias of --batch-tokens


def test_serve_on_ray_warns_loudly_on_a_non_loopback_host_without_a_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import rerank_plugins.ray.serve as on_ray

    def stop_here(**_: object) -> None:
        raise InvalidInputError("stopped before deploying")

    monkeypatch.delenv("RERANK_API_KEY", raising=False)
    monkeypatch.setattr(on_ray.ray, "is_initialized", lambda: True)  # no cluster started
    monkeypatch.setattr(on_ray, "serve_app", stop_here)
    with caplog.at_level(logging.WARNING):
        assert main(["serve", "--model", "/no/such/model", "--host", "0.0.0.0", "--ray"]) == 2
    assert "WITHOUT AN API KEY" in caplog.text


def test_score_command_with_ray_keeps_stdout_for_the_summary_and_honours_no_progress(
    local_ray: None,
    modernbert_dir: Path,
    tmp_path: Path,
    one_thread: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps({"query": "w1", "text": f"w{i}"}) + "\n" for i in range(6))
    )
    context = ray.data.DataContext.get_current()
    before = context.enable_progress_bars
    out = io.StringIO()
    argv = ["score", str(source), "-o", str(tmp_path / "ray"), "--model", str(modernbert_dir)]
    argv += ["--device", "cpu", "--num-cpus", str(ACTOR_CPUS), "--no-progress", "--ray"]
    try:
        assert main(argv, stdout=out) == 0
        assert context.enable_progress_bars is False
    finally:
        context.enable_progress_bars = before
    assert json.loads(out.getvalue())["rows"] == 6  # the summary, alone
    assert capsys.readouterr().out == ""  # nothing else on standard output
