"""The PairScorer seam of the local cross-encoders: encode per query, score pairs of any
queries together (what the server's cross-request batching runs on)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from rerank_plugins.errors import InputTooLongError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.scoring import PairScorer
from rerank_plugins.testing import random_text


@pytest.fixture(scope="module")
def scorer(modernbert_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(modernbert_dir, device="cpu", max_length=64)


def test_local_cross_encoder_is_a_pair_scorer(scorer: CrossEncoderScorer) -> None:
    assert isinstance(scorer, PairScorer)


def test_score_pairs_of_encode_pairs_equals_score(
    scorer: CrossEncoderScorer, docs: list[str]
) -> None:
    direct = scorer.score("w1 w2", docs)
    via_seam = scorer.score_pairs(scorer.encode_pairs("w1 w2", docs))
    assert via_seam == direct  # same tokens, same forward: identical Score objects


def test_pairs_from_different_queries_score_as_they_do_alone(scorer: CrossEncoderScorer) -> None:
    rng = random.Random(5)
    queries = ["w1 w2", "w7 w8 w9", "w300"]
    groups = [[random_text(rng, n) for n in (3, 30, 12)] for _ in queries]
    mixed = [p for q, g in zip(queries, groups, strict=True) for p in scorer.encode_pairs(q, g)]
    rng.shuffle(order := list(range(len(mixed))))
    scores = scorer.score_pairs([mixed[i] for i in order])
    together = [0.0] * len(mixed)
    for position, score in zip(order, scores, strict=True):
        together[position] = score.value
    alone = [s.value for q, g in zip(queries, groups, strict=True) for s in scorer.score(q, g)]
    assert together == pytest.approx(alone, abs=1e-6)


def test_raw_scores_are_the_logits_behind_the_probabilities(
    scorer: CrossEncoderScorer, docs: list[str]
) -> None:
    pairs = scorer.encode_pairs("w1 w2", docs)
    probabilities = scorer.score_pairs(pairs)
    logits = scorer.score_pairs(pairs, raw=True)
    assert {s.kind for s in logits} == {"logit"}
    for p, lg in zip(probabilities, logits, strict=True):
        assert p.value == pytest.approx(1 / (1 + math.exp(-lg.value)), abs=1e-12)


def test_max_document_tokens_cuts_and_flags_documents(scorer: CrossEncoderScorer) -> None:
    pairs = scorer.encode_pairs("w1", ["w2 w3 w4 w5 w6", "w2"], max_document_tokens=3)
    assert [p.truncated for p in pairs] == [True, False]
    assert pairs[0].tokens == 1 + 3 + 3  # [CLS] q [SEP] d[:3] [SEP]
    assert pairs[1].tokens == 1 + 3 + 1


def test_overflow_override_refuses_over_window_documents_by_index(
    scorer: CrossEncoderScorer,
) -> None:
    long = random_text(random.Random(1), 200)
    with pytest.raises(InputTooLongError) as info:
        scorer.encode_pairs("w1", ["w2", long, "w3", long], overflow="error")
    assert info.value.indices == (1, 3)
    cut = scorer.encode_pairs("w1", ["w2", long])  # the scorer's own policy: truncate
    assert [p.truncated for p in cut] == [False, True] and cut[1].tokens == 64
