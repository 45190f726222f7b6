"""Server faults that need the local scorer's tokenizer (issue 20 items 11 and 17)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.serve import create_app


def test_a_refusal_caused_by_max_tokens_per_doc_names_it(
    local_scorer: CrossEncoderScorer,
) -> None:
    with TestClient(create_app(local_scorer, warmup=False)) as c:
        answer = c.post(
            "/v2/rerank",
            json={
                "query": "q",
                "documents": ["short", "a longer document " * 3],
                "max_tokens_per_doc": 4,
                "truncate": False,
            },
        )
    assert answer.status_code == 413
    body = answer.json()
    assert "max_tokens_per_doc" in body["message"] and body["indices"] == [1]


def test_a_request_over_the_queue_cap_is_refused_before_all_of_it_is_tokenized(
    local_scorer: CrossEncoderScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenized: list[int] = []
    original = local_scorer.encode_pairs

    def counting(query: str, documents: Any, **options: Any) -> Any:
        tokenized.append(len(documents))
        return original(query, documents, **options)

    monkeypatch.setattr(local_scorer, "encode_pairs", counting)
    docs = [f"document number {i} " * 8 for i in range(1000)]
    with TestClient(create_app(local_scorer, warmup=False, max_queued_tokens=2000)) as c:
        answer = c.post("/v1/rerank", json={"query": "q", "documents": docs})
    assert answer.status_code == 413
    assert "--max-queued-tokens" in answer.json()["message"]
    assert sum(tokenized) < 200, f"{sum(tokenized)} of 1000 documents tokenized first"
