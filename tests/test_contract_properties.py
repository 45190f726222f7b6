"""The scorer contract as a property, on real scorers (a tiny local checkpoint, ColBERT and
RemoteScorer against the shipped fake server, sync and async), over arbitrary Unicode:
surrogates, control characters, any list length and any mix of lengths.

For every input, a call either returns one finite :class:`Score` per document, in input
order, or raises a :class:`RerankError` (never a ``TypeError``, ``UnicodeEncodeError``, ...);
a document the scorer refuses is named in ``indices``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_plugins import InvalidInputError, RerankError, Score
from rerank_plugins.local.colbert import ColBERTScorer
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.remote import RemoteScorer
from rerank_plugins.testing import make_colbert_checkpoint
from rerank_plugins.testing.fake_server import FakeRerankServer, fake_probability

# Every code point, lone surrogates and control characters included, plus words the tiny
# tokenizers know, so that both unknown and known tokens (and long documents) show up.
ANY_CHAR = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)
WORDS = st.sampled_from([f"w{i}" for i in range(50)])
TEXT = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.lists(WORDS, max_size=120).map(" ".join),  # over the 32-token windows below
    st.text(st.sampled_from(" \t\n\r\x00\x0b\u2028\ufeff\u200b"), max_size=8),
)
DOCUMENTS = st.lists(TEXT, max_size=12)
SETTINGS = settings(
    max_examples=30,
    deadline=None,  # shared CPUs: a slow example is not a failure
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

Run = Callable[[str, Sequence[str]], list[Score]]


def has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def check_contract(run: Run, query: str, documents: list[str]) -> list[Score] | None:
    original = list(documents)
    try:
        scores = run(query, documents)
    except InvalidInputError as exc:
        bad = [i for i, d in enumerate(documents) if has_surrogate(d)]
        if query.strip() and not has_surrogate(query):
            assert list(exc.indices) == bad and bad, exc  # names exactly the bad documents
        else:
            assert not query.strip() or has_surrogate(query), exc
        return None
    except RerankError:
        return None  # typed; allowed by the contract
    finally:
        assert documents == original  # never mutated
    assert query.strip() and not has_surrogate(query)
    assert not any(has_surrogate(d) for d in documents)
    assert len(scores) == len(documents)
    assert all(isinstance(s, Score) and math.isfinite(s.value) for s in scores)
    return scores


@pytest.fixture(scope="module")
def cross_encoder(modernbert_dir: Path) -> CrossEncoderScorer:
    return CrossEncoderScorer(modernbert_dir, device="cpu", max_length=32)


@pytest.fixture(scope="module")
def colbert(tmp_path_factory: pytest.TempPathFactory) -> ColBERTScorer:
    directory = make_colbert_checkpoint(tmp_path_factory.mktemp("colbert") / "c")
    return ColBERTScorer(directory, device="cpu", document_length=32)


@pytest.fixture(scope="module")
def remote() -> RemoteScorer:
    transport = httpx.MockTransport(FakeRerankServer("cohere", max_batch_size=5).handle)
    return RemoteScorer(
        "http://127.0.0.1:8000/v1",
        api_key_env=None,
        client=httpx.Client(transport=transport),
        async_client=httpx.AsyncClient(transport=transport),
    )


@SETTINGS
@given(query=TEXT, documents=DOCUMENTS)
def test_local_cross_encoder_keeps_the_contract(
    cross_encoder: CrossEncoderScorer, query: str, documents: list[str]
) -> None:
    scores = check_contract(cross_encoder.score, query, documents)
    if scores:  # in input order: each position scores like the document alone
        last = len(documents) - 1
        alone = cross_encoder.score(query, [documents[last]])[0]
        assert scores[last].value == pytest.approx(alone.value, abs=1e-5)
        assert scores[last].truncated == alone.truncated


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
@SETTINGS
@given(query=TEXT, documents=DOCUMENTS)
def test_colbert_keeps_the_contract(
    colbert: ColBERTScorer, query: str, documents: list[str]
) -> None:
    scores = check_contract(colbert.score, query, documents)
    if scores:
        alone = colbert.score(query, [documents[0]])[0]
        assert scores[0].value == pytest.approx(alone.value, abs=1e-4)


@SETTINGS
@given(query=TEXT, documents=DOCUMENTS)
def test_remote_scorer_keeps_the_contract_sync(
    remote: RemoteScorer, query: str, documents: list[str]
) -> None:
    scores = check_contract(remote.score, query, documents)
    if scores is not None:  # the fake server's scores depend only on (query, document)
        expected = [fake_probability(query, d) for d in documents]
        assert [s.value for s in scores] == pytest.approx(expected)


@SETTINGS
@given(query=TEXT, documents=DOCUMENTS)
def test_remote_scorer_keeps_the_contract_async(
    remote: RemoteScorer, query: str, documents: list[str]
) -> None:
    def run(q: str, d: Sequence[str]) -> list[Score]:
        return asyncio.run(remote.ascore(q, d))

    scores = check_contract(run, query, documents)
    if scores is not None:
        expected = [fake_probability(query, d) for d in documents]
        assert [s.value for s in scores] == pytest.approx(expected)


def test_lone_surrogates_are_named_not_a_type_error_locally(
    cross_encoder: CrossEncoderScorer, colbert: ColBERTScorer
) -> None:
    # The example that broke: tokenizers raised TypeError for "\ud800".
    for scorer in (cross_encoder, colbert):
        with pytest.raises(InvalidInputError) as info:
            scorer.score("w1", ["w1", "x\ud800", "w2", "\udfff"])
        assert info.value.indices == (1, 3)
        with pytest.raises(InvalidInputError):
            scorer.score("\ud800", ["w1"])
