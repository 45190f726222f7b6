"""RemoteScorer against a real Infinity server (started on loopback by ``conftest.py``).

Infinity runs sentence-transformers' CrossEncoder with transformers 4.x in its own
virtualenv; the references here run transformers 5.x (eager attention, fp32) and the
project's own local scorer on the same checkpoint in this process. Documents are longer
than the tiny model's local attention window, so the band mask matters.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import httpx
import pytest

from rerank_plugins import load_scorer
from rerank_plugins.errors import EndpointStatusError
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.testing import random_text

from .conftest import InfinityServer

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def query_and_docs() -> tuple[str, list[str]]:
    rng = random.Random(2024)
    query = random_text(rng, 7)
    lengths = (1, 3, 8, 9, 17, 40, 64, 65, 120, 300, 700, 0, 5)
    docs = [random_text(rng, n) for n in lengths]
    docs[3] = f"{query} {docs[3]}"  # one document that shares the query's words
    return query, docs


@pytest.fixture(scope="module")
def reference_logits(
    infinity: InfinityServer, query_and_docs: tuple[str, list[str]]
) -> list[float]:
    """transformers' own ModernBERT, eager attention, fp32: ``[CLS] q [SEP] d [SEP]``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    query, docs = query_and_docs
    tokenizer = transformers.AutoTokenizer.from_pretrained(infinity.checkpoint)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        infinity.checkpoint, attn_implementation="eager", dtype=torch.float32
    ).eval()
    logits = []
    with torch.inference_mode():
        for doc in docs:
            # The pair-list form: tokenizer(query, "") would drop an empty second text.
            batch = tokenizer([(query, doc)], return_tensors="pt")
            logits.append(float(model(**batch).logits[0, 0]))
    return logits


def remote(infinity: InfinityServer, **options: object) -> RemoteScorer:
    return RemoteScorer(
        infinity.base_url, api_key=infinity.api_key, model=infinity.model, **options
    )  # type: ignore[arg-type]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_scores_equal_the_servers_own_answer(
    infinity: InfinityServer, query_and_docs: tuple[str, list[str]]
) -> None:
    query, docs = query_and_docs
    raw = httpx.post(
        f"{infinity.base_url}/rerank",
        json={"query": query, "documents": docs, "model": infinity.model},
        headers={"Authorization": f"Bearer {infinity.api_key}"},
        timeout=120,
    ).json()
    order = [r["index"] for r in raw["results"]]
    assert order != sorted(order)  # the server answers by relevance, not input order
    by_index = {r["index"]: r["relevance_score"] for r in raw["results"]}
    with remote(infinity) as scorer:
        scores = scorer.score(query, docs)
    assert [s.value for s in scores] == [by_index[i] for i in range(len(docs))]
    assert {s.kind for s in scores} == {"probability"}


def test_scores_match_a_reference_forward_of_the_same_checkpoint(
    infinity: InfinityServer,
    query_and_docs: tuple[str, list[str]],
    reference_logits: list[float],
) -> None:
    query, docs = query_and_docs
    with remote(infinity) as scorer:
        values = [s.value for s in scorer.score(query, docs)]
    expected = [sigmoid(x) for x in reference_logits]
    delta = max(abs(a - b) for a, b in zip(values, expected, strict=True))
    print(f"max |delta probability| vs transformers eager fp32: {delta:.3g}")
    assert delta < TOLERANCE


def test_raw_scores_are_the_reference_logits(
    infinity: InfinityServer,
    query_and_docs: tuple[str, list[str]],
    reference_logits: list[float],
) -> None:
    query, docs = query_and_docs
    with remote(infinity, score_kind="logit", extra_body={"raw_scores": True}) as scorer:
        scores = scorer.score(query, docs)
    delta = max(abs(s.value - x) for s, x in zip(scores, reference_logits, strict=True))
    print(f"max |delta logit| vs transformers eager fp32: {delta:.3g}")
    assert delta < TOLERANCE
    assert {s.kind for s in scores} == {"logit"}


def test_remote_and_local_scorers_agree(
    infinity: InfinityServer, query_and_docs: tuple[str, list[str]]
) -> None:
    query, docs = query_and_docs
    local = load_scorer(Path(infinity.checkpoint), device="cpu")
    with remote(infinity) as scorer:
        remote_values = [s.value for s in scorer.score(query, docs)]
    local_values = [s.value for s in local.score(query, docs)]
    delta = max(abs(a - b) for a, b in zip(remote_values, local_values, strict=True))
    print(f"max |delta probability| remote (Infinity) vs local scorer: {delta:.3g}")
    assert delta < TOLERANCE


async def test_async_equals_sync(
    infinity: InfinityServer, query_and_docs: tuple[str, list[str]]
) -> None:
    query, docs = query_and_docs
    async with remote(infinity, max_batch_size=4, max_concurrency=3) as scorer:
        async_values = [s.value for s in await scorer.ascore(query, docs)]
        sync_values = [s.value for s in scorer.score(query, docs)]
    # Infinity batches concurrent requests together: padding moves the float noise.
    assert async_values == pytest.approx(sync_values, abs=TOLERANCE)


def test_over_the_servers_document_limit_the_batch_is_split(infinity: InfinityServer) -> None:
    # Infinity refuses more than 2048 documents (422 "at most 2048 items"); the scorer
    # was told nothing about it.
    rng = random.Random(5)
    docs = [random_text(rng, 2) for _ in range(2100)]
    with remote(infinity, max_batch_size=5000) as scorer:
        scores = scorer.score("w1 w2", docs)
        again = scorer.score("w1 w2", docs[2040:2060])
    assert len(scores) == 2100
    assert [s.value for s in scores[2040:2060]] == pytest.approx(
        [s.value for s in again], abs=TOLERANCE
    )


def test_a_wrong_key_is_refused_without_retries(infinity: InfinityServer) -> None:
    scorer = RemoteScorer(infinity.base_url, api_key="not-the-key", model=infinity.model)
    with pytest.raises(EndpointStatusError) as info:
        scorer.score("w1", ["w2", "w3"])
    assert info.value.status_code == 401 and info.value.indices == (0, 1)
    assert "not-the-key" not in str(info.value)
    scorer.close()


def test_langchain_compressor_against_infinity(
    infinity: InfinityServer,
    query_and_docs: tuple[str, list[str]],
    reference_logits: list[float],
) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    query, docs = query_and_docs
    compressor = RerankCompressor(
        model=infinity.base_url,
        model_kwargs={"api_key": infinity.api_key, "model": infinity.model},
        top_n=3,
    )
    documents = [Document(page_content=d, id=f"doc-{i}") for i, d in enumerate(docs)]
    out = compressor.compress_documents(documents, query)
    best = sorted(range(len(docs)), key=lambda i: -reference_logits[i])[:3]
    assert [d.id for d in out] == [f"doc-{i}" for i in best]


async def test_llama_index_postprocessor_against_infinity(
    infinity: InfinityServer,
    query_and_docs: tuple[str, list[str]],
    reference_logits: list[float],
) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    query, docs = query_and_docs
    post = RerankPostprocessor(
        model=infinity.base_url,
        model_kwargs={"api_key": infinity.api_key, "model": infinity.model},
        top_n=4,
    )
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}")) for i, d in enumerate(docs)]
    best = sorted(range(len(docs)), key=lambda i: -reference_logits[i])[:4]
    out = post.postprocess_nodes(nodes, query_bundle=QueryBundle(query))
    assert [n.node.node_id for n in out] == [f"n{i}" for i in best]
    aout = await post.apostprocess_nodes(nodes, query_bundle=QueryBundle(query))
    assert [n.node.node_id for n in aout] == [f"n{i}" for i in best]
