"""Scorers and adapters survive pickle and deepcopy (multiprocessing, Ray, framework copies)."""

from __future__ import annotations

import asyncio
import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from rerank_plugins import CrossEncoderScorer, RemoteScorer
from rerank_plugins.testing.fake_server import FakeRerankServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["w1 w2 w3", "w9 w8", "w1 w50 w51 w52", "w200"]


def values(scores: list) -> list[float]:  # type: ignore[type-arg]
    return [s.value for s in scores]


def test_a_local_scorer_deep_copies_sharing_weights_with_its_own_worker(
    modernbert_dir: Path,
) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", max_length=32, output="logit")
    asyncio.run(scorer.ascore("w1", DOCS))  # start the worker thread: it must not be copied
    twin = copy.deepcopy(scorer)
    assert twin is not scorer and twin.classifier is scorer.classifier
    assert twin._worker is not scorer._worker
    assert (twin.max_length, twin.output) == (32, "logit")
    assert values(asyncio.run(twin.ascore("w1", DOCS))) == values(scorer.score("w1", DOCS))


@pytest.mark.slow  # a fresh interpreter importing torch (> 5 s here)
def test_a_local_scorer_unpickles_in_another_process(modernbert_dir: Path, tmp_path: Path) -> None:
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu")
    blob = tmp_path / "scorer.pkl"
    blob.write_bytes(pickle.dumps(scorer))
    code = (
        "import pickle, sys\n"
        f"scorer = pickle.loads(open({str(blob)!r}, 'rb').read())\n"
        f"print(repr([s.value for s in scorer.score('w1', {DOCS!r})]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(values(scorer.score("w1", DOCS)))


def test_a_remote_scorer_copies_with_new_clients_and_its_key_still_secret() -> None:
    transport = httpx.MockTransport(FakeRerankServer().handle)
    scorer = RemoteScorer(
        "http://127.0.0.1:8000/v1", api_key="sk-secret", client=httpx.Client(transport=transport)
    )
    expected = values(scorer.score("w1", DOCS))
    for twin in (copy.deepcopy(scorer), pickle.loads(pickle.dumps(scorer))):
        assert isinstance(twin.api_key, SecretStr)
        assert twin.api_key.get_secret_value() == "sk-secret"
        assert "sk-secret" not in repr(twin)
        assert twin._client is None  # a client passed in does not travel
        twin._client = httpx.Client(transport=transport)
        assert values(twin.score("w1", DOCS)) == expected


def test_adapters_pickle_and_deep_copy(modernbert_dir: Path) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_plugins.langchain import CrossEncoder, RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    options = {"device": "cpu"}
    compressor = RerankCompressor(model=str(modernbert_dir), model_kwargs=options, top_n=2)
    documents = [Document(page_content=d, id=str(i)) for i, d in enumerate(DOCS)]
    expected = [d.id for d in compressor.compress_documents(documents, "w1")]
    for twin in (copy.deepcopy(compressor), pickle.loads(pickle.dumps(compressor))):
        assert [d.id for d in twin.compress_documents(documents, "w1")] == expected
        assert twin.top_n == 2

    post = RerankPostprocessor(model=str(modernbert_dir), model_kwargs=options, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i))) for i, d in enumerate(DOCS)]
    expected = [n.node.node_id for n in post.postprocess_nodes(nodes, query_str="w1")]
    for twin in (copy.deepcopy(post), pickle.loads(pickle.dumps(post))):
        assert [n.node.node_id for n in twin.postprocess_nodes(nodes, query_str="w1")] == expected

    encoder = CrossEncoder(model=modernbert_dir, model_kwargs=options)
    pairs = [("w1", d) for d in DOCS]
    assert pickle.loads(pickle.dumps(encoder)).score(pairs) == encoder.score(pairs)


def test_colbert_and_matryoshka_scorers_copy_with_their_settings(tmp_path: Path) -> None:
    from rerank_plugins import ColBERTScorer, MatryoshkaScorer
    from rerank_plugins.local.colbert import DocumentVectorCache
    from rerank_plugins.testing import make_colbert_checkpoint, make_matryoshka_checkpoint

    colbert = ColBERTScorer(
        make_colbert_checkpoint(tmp_path / "colbert"),
        device="cpu",
        reduce="mean",
        cache=DocumentVectorCache(2**20),
    )
    twin = pickle.loads(pickle.dumps(colbert))
    assert twin.reduce == "mean" and twin.trunk is colbert.trunk
    assert twin.cache is not None and twin.cache is not colbert.cache
    assert twin.cache.max_bytes == 2**20
    assert values(twin.score("w1", DOCS)) == values(colbert.score("w1", DOCS))

    matryoshka = MatryoshkaScorer(make_matryoshka_checkpoint(tmp_path / "mm"), device="cpu")
    twin_mm = copy.deepcopy(matryoshka)
    assert (twin_mm.layer, twin_mm.dim) == (matryoshka.layer, matryoshka.dim)
    assert twin_mm.classifier is matryoshka.classifier
    assert values(twin_mm.score("w1", DOCS)) == values(matryoshka.score("w1", DOCS))


def test_recorded_arguments_hold_no_plain_secret(modernbert_dir: Path) -> None:
    scorer = RemoteScorer("https://user:hunter2@h/v1", api_key_env=None)
    assert "hunter2" not in repr(vars(scorer))
    keyed = RemoteScorer("https://h/v1", api_key="sk-plain")
    assert "sk-plain" not in repr(vars(keyed))
    local = CrossEncoderScorer(modernbert_dir, device="cpu", token="hf_plain")
    assert "hf_plain" not in repr(vars(local)) and b"hf_plain" not in pickle.dumps(local)
