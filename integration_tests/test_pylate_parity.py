"""ColBERTScorer against PyLate itself, on random checkpoints in GTE-ModernColBERT's layout.

PyLate 1.6 pins sentence-transformers 5.3 / transformers 5.3, so it runs in its own
virtualenv (``bash integration_tests/setup_pylate.sh``; ``RERANK_PYLATE_VENV`` points
elsewhere) through ``pylate_reference.py``; without it the tests skip, unless
``RERANK_REQUIRE_INTEGRATION=1`` (CI), which makes that a failure. The checkpoints carry
the real tokenizer and configs of lightonai/GTE-ModernColBERT-v1 from the shared fixtures
(prefix ids 50368/50369, the punctuation skiplist, query_length 48, document_length 300)
around a scaled-down trunk (4 layers, ±4-token local windows, so the band mask matters).

Compared, in fp32 on the CPU: every token vector (same count, max |Δ| ≤ 1e-5), every
score against PyLate's MaxSim of the query with each document alone (|Δ| ≤ 1e-4, same
order), and the one deliberate difference: ``pylate.rank.rerank`` zero-pads the
candidates without a mask, which our unmasked :func:`~rerank_plugins.local.maxsim.maxsim`
reproduces and our scorer does not do.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from rerank_plugins.local.colbert import ColBERTScorer
from rerank_plugins.local.maxsim import maxsim, pad_vectors
from rerank_plugins.testing import make_colbert_checkpoint

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "shared" / "fixtures"
VECTOR_TOLERANCE = 1e-5
SCORE_TOLERANCE = 1e-4

SENTENCES = [
    "The Eiffel Tower, completed in 1889, is 330 metres tall.",
    "Photosynthesis converts light energy into chemical energy (stored as glucose).",
    "What's the boiling point of water at sea level? It's 100 °C!",
    "Rust's borrow checker prevents data races at compile time; C++ does not.",
    "Late-interaction models score a query against every token of a document.",
    "In 2024, the ECB kept rates at 4.5% - a record high.",
    "Tokyo is Japan's capital & its largest city: 14 million people live there.",
    "Mitochondria are the powerhouse of the cell... or so the saying goes.",
]
QUERIES = [
    "How tall is the Eiffel Tower?",
    "capital of Japan",
    # Longer than query_length (48 tokens): PyLate cuts it, so do we.
    " ".join(SENTENCES[:4]),
]


def documents() -> list[str]:
    rng = random.Random(5)
    docs = ["", "   ", "Paris.", "?!", SENTENCES[0], SENTENCES[6]]
    for n in (3, 9, 20, 45, 80):  # the longest ones pass document_length=300 tokens
        docs.append(" ".join(rng.choice(SENTENCES) for _ in range(n)))
    docs.append("naïve café — Ünïcödé «quotes» 東京 🚀")
    return docs


@dataclass(frozen=True)
class Scenario:
    name: str
    settings: dict[str, Any]
    pylate_options: dict[str, Any]
    our_options: dict[str, Any]


SCENARIOS = [
    Scenario("gte-moderncolbert", {}, {}, {}),
    Scenario("long-documents", {}, {"document_length": 1024}, {"document_length": 1024}),
    Scenario(
        "query-expansion",
        {"do_query_expansion": True, "attend_to_expansion_tokens": False, "query_length": 32},
        {},
        {},
    ),
    Scenario(
        "expansion-attended",
        {"do_query_expansion": True, "attend_to_expansion_tokens": True, "query_length": 32},
        {},
        {},
    ),
]


@dataclass(frozen=True)
class Reference:
    scenario: Scenario
    checkpoint: Path
    vectors: dict[str, torch.Tensor]
    scores: dict[str, Any]


def _python() -> Path:
    venv = Path(os.environ.get("RERANK_PYLATE_VENV") or HERE / ".pylate" / ".venv")
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    python = _python()
    problem = None
    if not python.exists():
        problem = f"no PyLate virtualenv at {python}; run: bash integration_tests/setup_pylate.sh"
    elif not (FIXTURES / "lightonai__GTE-ModernColBERT-v1" / "tokenizer.json").is_file():
        problem = f"the GTE-ModernColBERT-v1 fixtures are not in {FIXTURES}"
    if problem is not None:
        if os.environ.get("RERANK_REQUIRE_INTEGRATION") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    root = tmp_path_factory.mktemp("pylate")
    jobs, checkpoints = [], []
    for i, scenario in enumerate(SCENARIOS):
        checkpoint = make_colbert_checkpoint(
            root / scenario.name, fixtures=FIXTURES, settings=scenario.settings, seed=i
        )
        checkpoints.append(checkpoint)
        jobs.append(
            {
                "checkpoint": str(checkpoint),
                "options": scenario.pylate_options,
                "queries": QUERIES,
                "documents": documents(),
            }
        )
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [
            str(python),
            str(HERE / "pylate_reference.py"),
            str(root / "jobs.json"),
            str(root / "out"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pylate_reference.py failed:\n{done.stderr[-4000:]}")
    return {
        s.name: Reference(
            s,
            checkpoints[i],
            load_file(str(root / "out" / str(i) / "vectors.safetensors")),
            json.loads((root / "out" / str(i) / "scores.json").read_text()),
        )
        for i, s in enumerate(SCENARIOS)
    }


def _ours(ref: Reference) -> ColBERTScorer:
    return ColBERTScorer(ref.checkpoint, device="cpu", dtype="float32", **ref.scenario.our_options)


def _max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max()) if a.numel() else 0.0


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_token_vectors_match_pylate(references: dict[str, Reference], name: str) -> None:
    ref = references[name]
    scorer = _ours(ref)
    for i, query in enumerate(QUERIES):
        ours = scorer.encode_query(query).vectors
        assert _max_delta(ours, ref.vectors[f"query.{i}"]) <= VECTOR_TOLERANCE
    for j, doc in enumerate(scorer.encode_documents(documents())):
        assert _max_delta(doc.vectors, ref.vectors[f"document.{j}"]) <= VECTOR_TOLERANCE


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_scores_and_order_match_pylate(references: dict[str, Reference], name: str) -> None:
    ref = references[name]
    scorer = _ours(ref)
    docs = documents()
    for query, expected in zip(QUERIES, ref.scores["results"], strict=True):
        ours = [s.value for s in scorer.score(query, docs)]
        exact = expected["exact"]
        assert max(abs(a - b) for a, b in zip(ours, exact, strict=True)) <= SCORE_TOLERANCE
        # Same order (ties, if any, within the tolerance are allowed to swap).
        order = sorted(range(len(docs)), key=lambda k: -ours[k])
        assert all(exact[a] >= exact[b] - SCORE_TOLERANCE for a, b in itertools.pairwise(order))


def test_settings_are_read_as_pylate_reads_them(references: dict[str, Reference]) -> None:
    for ref in references.values():
        scorer = _ours(ref)
        theirs = ref.scores["settings"]
        assert scorer.query_length == theirs["query_length"]
        assert scorer.document_length == theirs["document_length"]
        assert scorer.settings.do_query_expansion == theirs["do_query_expansion"]
        assert scorer.settings.attend_to_expansion_tokens == theirs["attend_to_expansion_tokens"]


def test_truncation_is_reported_where_pylate_cuts(references: dict[str, Reference]) -> None:
    ref = references["gte-moderncolbert"]
    scores = _ours(ref).score(QUERIES[0], documents())
    assert any(s.truncated for s in scores) and not all(s.truncated for s in scores)
    longer = _ours(references["long-documents"]).score(QUERIES[0], documents())
    assert sum(s.truncated for s in longer) < sum(s.truncated for s in scores)


def test_pylate_rerank_zero_padding_is_the_deliberate_difference(
    references: dict[str, Reference],
) -> None:
    """``rank.rerank`` = MaxSim over zero-padded vectors without a mask; we mask."""
    ref = references["gte-moderncolbert"]
    scorer = _ours(ref)
    docs = documents()
    vectors = [d.vectors for d in scorer.encode_documents(docs)]
    padded, mask = pad_vectors(vectors)
    differs = 0
    for query, expected in zip(QUERIES, ref.scores["results"], strict=True):
        q = scorer.encode_query(query).vectors
        unmasked = maxsim(q, padded).tolist()
        assert max(abs(a - b) for a, b in zip(unmasked, expected["rerank"], strict=True)) <= (
            SCORE_TOLERANCE
        )
        masked = maxsim(q, padded, mask).tolist()
        ours = [s.value for s in scorer.score(query, docs)]
        assert max(abs(a - b) for a, b in zip(masked, ours, strict=True)) <= SCORE_TOLERANCE
        differs += sum(
            abs(r - e) > 1e-3 for r, e in zip(expected["rerank"], expected["exact"], strict=True)
        )
    assert differs > 0  # short candidates gain from padding slots in PyLate's rerank
