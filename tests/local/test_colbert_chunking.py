"""ColBERT past ``document_length`` (``overflow="chunk"``) and ``max_tokens_per_doc``: the
windows' token vectors equal transformers' forward of ``[CLS] [D] window [SEP]`` and the
score is MaxSim over the union of all the windows' vectors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from rerank_plugins import InvalidInputError
from rerank_plugins.local.chunking import chunk_spans
from rerank_plugins.local.colbert import ColBERTScorer
from rerank_plugins.local.maxsim import maxsim
from rerank_plugins.testing import make_colbert_checkpoint, random_text
from tests.contract import QUERY, ScorerContract

CLS, SEP = 2, 3
LENGTH = 24  # document_length: [CLS] [D] + 21 tokens + [SEP]
ROOM = LENGTH - 3


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colbert_checkpoint(tmp_path_factory.mktemp("colbert") / "tiny-colbert")


@pytest.fixture(scope="module")
def model(colbert_dir: Path) -> transformers.ModernBertModel:
    return transformers.ModernBertModel.from_pretrained(
        str(colbert_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()


def reference_score(
    scorer: ColBERTScorer, model: transformers.ModernBertModel, query: str, windows: list[list[int]]
) -> float:
    """MaxSim of the query over the union of transformers' vectors of every window."""
    weight = scorer.projection[0].linear.weight
    vectors = []
    with torch.inference_mode():
        for ids in windows:
            framed = [CLS, scorer.document_prefix_id, *ids, SEP]
            hidden = model(input_ids=torch.tensor([framed])).last_hidden_state[0]
            vectors.append(F.normalize(hidden @ weight.T, dim=-1))
        return float(maxsim(scorer.encode_query(query).vectors, torch.cat(vectors).unsqueeze(0))[0])


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(None, 0), (None, 6), (8, 3)])
def test_chunked_maxsim_runs_over_the_union_of_the_windows(
    colbert_dir: Path, model: transformers.ModernBertModel, chunk_tokens: int | None, overlap: int
) -> None:
    scorer = ColBERTScorer(
        colbert_dir,
        device="cpu",
        document_length=LENGTH,
        overflow="chunk",
        chunk_tokens=chunk_tokens,
        chunk_overlap=overlap,
        batch_tokens=64,
    )
    rng = random.Random(4)
    docs = [random_text(rng, n) for n in (70, 5, ROOM, ROOM + 1)]
    size = ROOM if chunk_tokens is None else chunk_tokens
    scores = scorer.score(QUERY, docs)
    for doc, score in zip(docs, scores, strict=True):
        ids = scorer.tokenizer.encode(doc, add_special_tokens=False).ids
        assert len(ids) == len(doc.split())
        windows = (
            [ids]
            if len(ids) <= ROOM
            else [ids[a:b] for a, b in chunk_spans(len(ids), size, overlap)]
        )
        assert score.value == pytest.approx(
            reference_score(scorer, model, QUERY, windows), abs=1e-4
        )
        assert score.chunks == (None if len(windows) == 1 else len(windows))
        assert score.truncated is False


def test_documents_that_fit_score_as_without_chunking(colbert_dir: Path) -> None:
    docs = [random_text(random.Random(2), n) for n in (1, 9, ROOM)]
    plain = ColBERTScorer(colbert_dir, device="cpu", document_length=LENGTH)
    chunked = ColBERTScorer(colbert_dir, device="cpu", document_length=LENGTH, overflow="chunk")
    assert chunked.score(QUERY, docs) == plain.score(QUERY, docs)


def test_max_tokens_per_doc_scores_the_first_n_tokens(
    colbert_dir: Path, model: transformers.ModernBertModel
) -> None:
    docs = [random_text(random.Random(3), n) for n in (50, 4)]
    for overflow in ("truncate", "error", "chunk"):
        scorer = ColBERTScorer(
            colbert_dir,
            device="cpu",
            document_length=LENGTH,
            overflow=overflow,
            max_tokens_per_doc=6,
        )
        scores = scorer.score(QUERY, docs)
        assert [s.truncated for s in scores] == [True, False]
        for doc, score in zip(docs, scores, strict=True):
            ids = scorer.tokenizer.encode(doc, add_special_tokens=False).ids[:6]
            expected = reference_score(scorer, model, QUERY, [ids])
            assert score.value == pytest.approx(expected, abs=1e-4)
        # The same documents again come from the cache, with the same flags.
        assert scorer.score(QUERY, docs) == scores


def test_a_cap_above_the_window_still_overflows(colbert_dir: Path) -> None:
    scorer = ColBERTScorer(
        colbert_dir, device="cpu", document_length=LENGTH, overflow="chunk", max_tokens_per_doc=40
    )
    (score,) = scorer.score(QUERY, [random_text(random.Random(3), 90)])
    assert score.truncated and score.chunks == 2  # 40 tokens: windows of 21 and 19


def test_bad_chunk_options_are_refused(colbert_dir: Path) -> None:
    with pytest.raises(InvalidInputError):
        ColBERTScorer(colbert_dir, device="cpu", chunk_tokens=4, chunk_overlap=4)
    scorer = ColBERTScorer(
        colbert_dir, device="cpu", document_length=LENGTH, overflow="chunk", chunk_tokens=ROOM + 1
    )
    with pytest.raises(InvalidInputError, match="chunk_tokens"):
        scorer.score(QUERY, [random_text(random.Random(3), 90)])


class TestChunkingColBERTScorer(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, colbert_dir: Path) -> ColBERTScorer:
        return ColBERTScorer(
            colbert_dir, device="cpu", document_length=LENGTH, overflow="chunk", chunk_overlap=4
        )
