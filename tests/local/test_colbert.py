"""Late-interaction scorer (PyLate ColBERT layout): encoding, MaxSim, cache, contract.

Parity with PyLate itself runs in ``integration_tests/test_pylate_parity.py`` (PyLate needs
its own virtualenv); here the vectors are checked against transformers' own ModernBERT
forward on the same checkpoint, and the PyLate-specific rules (prefix tokens, lengths,
skiplist, query expansion) against the ids and shapes they must produce.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

from rerank_plugins import InputTooLongError, InvalidInputError, Score, load_scorer
from rerank_plugins.errors import UnsupportedModelError
from rerank_plugins.local.colbert import (
    ColBERTScorer,
    DenseProjection,
    DocumentVectorCache,
    TokenVectors,
    encode_keys_limited,
)
from rerank_plugins.local.detect import detect_kind
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.local.maxsim import maxsim, maxsim_many, pad_vectors
from rerank_plugins.testing import make_colbert_checkpoint, make_modernbert_checkpoint, random_text
from tests.conftest import FIXTURES
from tests.contract import QUERY, ScorerContract

REAL = FIXTURES / "lightonai__GTE-ModernColBERT-v1"
needs_fixtures = pytest.mark.skipif(
    not (REAL / "tokenizer.json").is_file()
    or not (FIXTURES / "Alibaba-NLP__gte-modernbert-base" / "config.json").is_file(),
    reason="the shared fixtures of GTE-ModernColBERT-v1 are not there",
)

# Word-tokenizer ids (save_colbert_word_tokenizer): [CLS]=2 [SEP]=3 [MASK]=4, w0=5, ...
CLS, SEP, MASK, W0 = 2, 3, 4, 5


@pytest.fixture(scope="module")
def colbert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colbert_checkpoint(tmp_path_factory.mktemp("colbert") / "tiny-colbert")


@pytest.fixture(scope="module")
def expansion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Query expansion on, expansion tokens not attended to (original ColBERT), 16 tokens."""
    settings = {"do_query_expansion": True, "attend_to_expansion_tokens": False}
    return make_colbert_checkpoint(
        tmp_path_factory.mktemp("colbert") / "expansion",
        settings={**settings, "query_length": 16},
        seed=3,
    )


@pytest.fixture(scope="module")
def scorer(colbert_dir: Path) -> ColBERTScorer:
    return ColBERTScorer(colbert_dir, device="cpu")


def first_dense(scorer: ColBERTScorer) -> DenseProjection:
    dense = scorer.projection[0]
    assert isinstance(dense, DenseProjection)
    return dense


def words(n: int, seed: int = 0) -> str:
    return random_text(random.Random(seed), n)


class TestColBERTScorer(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, colbert_dir: Path) -> ColBERTScorer:
        return ColBERTScorer(colbert_dir, device="cpu")


class TestColBERTScorerWithoutCache(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, colbert_dir: Path) -> ColBERTScorer:
        return ColBERTScorer(colbert_dir, device="cpu", vector_cache=None, batch_tokens=256)


class TestColBERTScorerWithExpansion(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, expansion_dir: Path) -> ColBERTScorer:
        return ColBERTScorer(expansion_dir, device="cpu", reduce="mean")


# --- loading -------------------------------------------------------------------------


def test_load_scorer_picks_the_late_interaction_scorer_from_the_files(colbert_dir: Path) -> None:
    assert detect_kind(colbert_dir) == "colbert"
    scorer = load_scorer(str(colbert_dir), device="cpu", max_length=64)
    assert isinstance(scorer, ColBERTScorer)
    assert scorer.document_length == 64  # max_length is document_length's alias


def test_a_plain_modernbert_encoder_is_not_taken_for_colbert(tmp_path: Path) -> None:
    directory = make_modernbert_checkpoint(tmp_path / "bare", head="bare")
    with pytest.raises(UnsupportedModelError):
        detect_kind(directory)
    with pytest.raises(UnsupportedModelError):
        ColBERTScorer(directory, device="cpu")


def test_settings_come_from_the_checkpoint(scorer: ColBERTScorer) -> None:
    s = scorer.settings
    assert (s.query_prefix, s.document_prefix) == ("[Q] ", "[D] ")
    assert (s.query_length, s.document_length) == (48, 300)
    assert not s.do_query_expansion and not s.attend_to_expansion_tokens
    assert scorer.trunk.spec.num_layers == 4
    assert first_dense(scorer).out_features == 128


@needs_fixtures
def test_real_tokenizer_gives_the_prefix_ids_of_gte_moderncolbert(tmp_path: Path) -> None:
    directory = make_colbert_checkpoint(tmp_path / "real", fixtures=FIXTURES)
    assert json.loads((directory / "config.json").read_text())["vocab_size"] == 50370
    scorer = ColBERTScorer(directory, device="cpu")
    assert (scorer.query_prefix_id, scorer.document_prefix_id) == (50368, 50369)
    assert scorer.settings.query_length == 48 and scorer.settings.document_length == 300
    ids = scorer._encode_document_ids(["Hello, world!"])[0].ids
    assert ids[:2] == [50281, 50369] and ids[-1] == 50282
    kept = scorer.encode_documents(["Hello, world!"])[0]
    assert kept.vectors.shape == (len(ids) - 2, 128)  # "," and "!" are skiplist tokens


def test_unknown_dense_activation_is_refused(tmp_path: Path) -> None:
    directory = make_colbert_checkpoint(tmp_path / "c", dense={"activation_function": "os.system"})
    with pytest.raises(UnsupportedModelError, match="activation"):
        ColBERTScorer(directory, device="cpu")


def test_dense_activation_and_bias_are_applied(tmp_path: Path) -> None:
    directory = make_colbert_checkpoint(
        tmp_path / "c",
        dense={"activation_function": "torch.nn.modules.activation.Tanh", "bias": True},
    )
    scorer = ColBERTScorer(directory, device="cpu")
    dense = first_dense(scorer)
    assert dense.linear.bias is not None
    x = torch.randn(3, 32)
    expected = torch.tanh(x @ dense.linear.weight.T + dense.linear.bias)
    assert torch.allclose(dense(x), expected, atol=1e-6)


# --- encoding as PyLate does it ------------------------------------------------------


def test_query_is_cls_prefix_text_sep_without_expansion(scorer: ColBERTScorer) -> None:
    encoded = scorer._encode_query_ids("w0 w1 w2")
    assert encoded.ids == [CLS, scorer.query_prefix_id, W0, W0 + 1, W0 + 2, SEP]
    assert scorer.encode_query("w0 w1 w2").vectors.shape == (6, 128)


def test_query_expansion_pads_with_mask_to_query_length(expansion_dir: Path) -> None:
    scorer = ColBERTScorer(expansion_dir, device="cpu")
    encoded = scorer._encode_query_ids("w0 w1")
    assert encoded.ids[:5] == [CLS, scorer.query_prefix_id, W0, W0 + 1, SEP]
    assert encoded.ids[5:] == [MASK] * 11 and encoded.real == 5
    query = scorer.encode_query("w0 w1")
    assert query.vectors.shape == (16, 128) and query.tokens == 16


def test_expansion_tokens_are_not_attended_to(expansion_dir: Path) -> None:
    scorer = ColBERTScorer(expansion_dir, device="cpu")
    encoded = scorer._encode_query_ids("w3 w4 w5")
    ids = torch.tensor(encoded.ids)
    with torch.inference_mode():
        limited = encode_keys_limited(scorer.trunk, ids, encoded.real)
        alone = scorer.trunk.encode(pack_sequences([encoded.ids[: encoded.real]], scorer.device))
        everything = scorer.trunk.encode(pack_sequences([encoded.ids], scorer.device))
        full_keys = encode_keys_limited(scorer.trunk, ids, len(encoded.ids))
    # The real tokens see only each other: as if the padding were not there.
    assert torch.allclose(limited[: encoded.real], alone, atol=1e-5)
    # With every key visible the dense-mask path is the packed engine's forward.
    assert torch.allclose(full_keys, everything, atol=1e-5)
    assert not torch.allclose(limited[: encoded.real], everything[: encoded.real], atol=1e-3)


def test_attend_to_expansion_tokens_lets_every_token_see_the_padding(tmp_path: Path) -> None:
    settings = {"do_query_expansion": True, "attend_to_expansion_tokens": True, "query_length": 12}
    scorer = ColBERTScorer(make_colbert_checkpoint(tmp_path / "c", settings=settings), device="cpu")
    encoded = scorer._encode_query_ids("w3 w4")
    with torch.inference_mode():
        everything = scorer._project(
            scorer.trunk.encode(pack_sequences([encoded.ids], scorer.device))
        )
    assert torch.allclose(scorer.encode_query("w3 w4").vectors, everything, atol=1e-6)


def test_documents_are_cls_prefix_text_sep_and_cut_to_document_length(
    scorer: ColBERTScorer,
) -> None:
    short, long = scorer._encode_document_ids(["w0 w1", words(400)])
    assert short.ids == [CLS, scorer.document_prefix_id, W0, W0 + 1, SEP]
    assert not short.truncated
    assert len(long.ids) == 300 and long.truncated and long.ids[-1] == SEP


def test_skiplist_drops_punctuation_from_documents_only(scorer: ColBERTScorer) -> None:
    text = "w1, w2. (w3)!"
    doc = scorer.encode_documents([text])[0]
    plain = scorer.encode_documents(["w1 w2 w3"])[0]
    assert doc.tokens == 2 + 3 + 5 + 1  # [CLS] [D] + words + punctuation + [SEP]
    assert doc.vectors.shape == plain.vectors.shape == (6, 128)
    assert scorer.encode_query(text).vectors.shape == (11, 128)  # queries keep them


def test_text_is_stripped_as_sentence_transformers_does(scorer: ColBERTScorer) -> None:
    a, b = scorer.encode_documents(["  w1 w2 \n", "w1 w2"])
    assert a.tokens == b.tokens and torch.allclose(a.vectors, b.vectors, atol=1e-6)


def test_vectors_match_transformers_modernbert_forward(
    scorer: ColBERTScorer, colbert_dir: Path
) -> None:
    """transformers' ModernBertModel (eager, fp32, padded batch) + Dense + L2 norm."""
    model = transformers.ModernBertModel.from_pretrained(
        str(colbert_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    texts = [words(n, seed=n) + " ." for n in (3, 40, 150)]
    encoded = scorer._encode_document_ids(texts)
    longest = max(len(e.ids) for e in encoded)
    ids = torch.tensor([e.ids + [MASK] * (longest - len(e.ids)) for e in encoded])
    mask = torch.tensor([[1] * len(e.ids) + [0] * (longest - len(e.ids)) for e in encoded])
    weight = first_dense(scorer).linear.weight
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        reference = F.normalize(hidden @ weight.T, dim=-1)
    ours = scorer.encode_documents(texts)
    for b, e in enumerate(encoded):
        keep = [i for i, t in enumerate(e.ids) if t not in scorer.skiplist_ids]
        assert ours[b].vectors.shape == (len(keep), 128)
        assert (ours[b].vectors - reference[b, keep]).abs().max() < 1e-5


# --- MaxSim --------------------------------------------------------------------------


def test_padding_never_wins_the_max() -> None:
    query = F.normalize(torch.randn(4, 8), dim=-1)
    short = -query[:1].clone()  # similarity -1 to the first query token
    long = F.normalize(torch.randn(30, 8), dim=-1)
    padded, mask = pad_vectors([short, long])
    masked = maxsim(query, padded, mask)
    assert masked[0] == pytest.approx(float((short @ query.T).sum()), abs=1e-5)
    # PyLate's rank.rerank: zero padding, no mask -> each negative max becomes 0.
    unmasked = maxsim(query, padded)
    expected = (short @ query.T).clamp(min=0).sum()
    assert unmasked[0] == pytest.approx(float(expected), abs=1e-5)
    assert masked[0] < unmasked[0]


def test_maxsim_many_equals_maxsim_of_each_document_alone() -> None:
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(7, 16, generator=gen)
    docs = [torch.randn(n, 16, generator=gen) for n in (1, 50, 3, 17, 200, 9)]
    alone = torch.stack([maxsim(query, d[None])[0] for d in docs])
    assert torch.allclose(maxsim_many(query, docs, padded=False), alone, atol=1e-5)
    for chunk in (1, 64, 100_000):
        chunked = maxsim_many(query, docs, chunk_tokens=chunk, padded=True)
        assert torch.allclose(chunked, alone, atol=1e-5)
    for padded in (False, True):
        mean = maxsim_many(query, docs, reduce="mean", padded=padded)
        assert torch.allclose(mean, alone / 7, atol=1e-6)


def test_reduce_mean_is_the_sum_over_query_tokens(colbert_dir: Path, docs: list[str]) -> None:
    total = ColBERTScorer(colbert_dir, device="cpu")
    mean = ColBERTScorer(colbert_dir, device="cpu", reduce="mean")
    n = total.encode_query(QUERY).vectors.shape[0]
    for s, m in zip(total.score(QUERY, docs), mean.score(QUERY, docs), strict=True):
        assert s.kind == m.kind == "maxsim"
        assert m.value == pytest.approx(s.value / n, abs=1e-6)
        assert -1.0 <= m.value <= 1.0


def test_scores_are_maxsim_of_the_public_vectors(scorer: ColBERTScorer, docs: list[str]) -> None:
    query = scorer.encode_query(QUERY)
    vectors = scorer.encode_documents(docs)
    scores = scorer.score(QUERY, docs)
    for s, v in zip(scores, vectors, strict=True):
        expected = (v.vectors @ query.vectors.T).amax(dim=0).sum()
        assert s.value == pytest.approx(float(expected), abs=1e-5)
        assert s.tokens == query.tokens + v.tokens


def test_token_budget_does_not_change_scores(colbert_dir: Path, docs: list[str]) -> None:
    big = ColBERTScorer(colbert_dir, device="cpu", vector_cache=None)
    small = ColBERTScorer(colbert_dir, device="cpu", vector_cache=None, batch_tokens=1)
    assert [s.value for s in big.score(QUERY, docs)] == pytest.approx(
        [s.value for s in small.score(QUERY, docs)], abs=1e-5
    )


# --- the document-vector cache -------------------------------------------------------


def test_cache_hit_equals_miss(colbert_dir: Path, docs: list[str]) -> None:
    cached = ColBERTScorer(colbert_dir, device="cpu")
    uncached = ColBERTScorer(colbert_dir, device="cpu", vector_cache=None)
    cold = cached.score(QUERY, docs)
    assert cached.vector_cache is not None and cached.vector_cache.misses == len(docs)
    warm = cached.score(QUERY, docs)
    assert cached.vector_cache.hits == len(docs)
    assert warm == cold
    assert [s.value for s in warm] == pytest.approx(
        [s.value for s in uncached.score(QUERY, docs)], abs=1e-5
    )


def test_warm_cache_runs_no_document_forward(
    colbert_dir: Path, docs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu")
    scorer.score(QUERY, docs)
    calls = []
    original = scorer.trunk.encode

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(scorer.trunk, "encode", counting)
    scorer.score("w7 w8 w9", docs)
    assert len(calls) == 1  # the query only


def test_duplicate_documents_are_encoded_once(colbert_dir: Path) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu", vector_cache=None)
    a, b, c = scorer.encode_documents(["w1 w2", "w3", "w1 w2"])
    assert a is c and a is not b


def test_cache_is_bounded_and_evicts_least_recently_used() -> None:
    def entry(n: int) -> TokenVectors:
        return TokenVectors(torch.zeros(n, 4), n, False)  # 16 bytes per token

    cache = DocumentVectorCache(max_bytes=100)
    cache.put("a", entry(2))
    cache.put("b", entry(2))
    cache.put("c", entry(2))  # 96 bytes
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", entry(2))  # evicts b, the least recently used
    assert "b" not in cache and all(k in cache for k in ("a", "c", "d"))
    assert cache.nbytes == 96 and cache.evictions == 1
    cache.put("huge", entry(10))  # larger than the bound: not stored, nothing evicted
    assert "huge" not in cache and len(cache) == 3
    cache.put("a", entry(5))  # replacing an entry frees its old bytes first
    assert cache.nbytes <= 100 and "a" in cache


def test_cache_keys_include_document_length_and_can_be_shared(colbert_dir: Path) -> None:
    shared = DocumentVectorCache()
    short = ColBERTScorer(colbert_dir, device="cpu", vector_cache=shared, document_length=8)
    long = ColBERTScorer(colbert_dir, device="cpu", vector_cache=shared, document_length=64)
    text = words(20)
    cut = short.encode_documents([text])[0]
    whole = long.encode_documents([text])[0]
    assert cut.truncated and not whole.truncated and len(shared) == 2
    again = ColBERTScorer(colbert_dir, device="cpu", vector_cache=shared, document_length=64)
    assert again.encode_documents([text])[0] is whole


def test_small_cache_still_scores_every_document(colbert_dir: Path, docs: list[str]) -> None:
    tiny = ColBERTScorer(colbert_dir, device="cpu", vector_cache=40_000)
    none = ColBERTScorer(colbert_dir, device="cpu", vector_cache=None)
    assert [s.value for s in tiny.score(QUERY, docs)] == pytest.approx(
        [s.value for s in none.score(QUERY, docs)], abs=1e-5
    )
    assert (
        tiny.vector_cache is not None
        and tiny.vector_cache.nbytes <= 40_000
        and tiny.vector_cache.evictions > 0
    )


# --- lengths and overflow ------------------------------------------------------------


def test_long_documents_are_truncated_flagged_and_warned_once(
    colbert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu")
    with caplog.at_level(logging.WARNING, logger="rerank_plugins.local.colbert"):
        first = scorer.score(QUERY, [words(10), words(500)])
        scorer.score(QUERY, [words(600)])
    assert [s.truncated for s in first] == [False, True]
    assert first[1].tokens == 300 + scorer.encode_query(QUERY).tokens
    assert sum("document_length=300" in r.message for r in caplog.records) == 1


def test_overflow_error_names_the_documents(colbert_dir: Path) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu", overflow="error")
    with pytest.raises(InputTooLongError) as info:
        scorer.score(QUERY, [words(10), words(500), words(5), words(298)])
    assert info.value.indices == (1, 3)
    with pytest.raises(InputTooLongError):
        scorer.score(words(60), ["w1"])  # a query over query_length too


def test_document_length_can_go_up_to_the_window(colbert_dir: Path) -> None:
    scorer = ColBERTScorer(colbert_dir, device="cpu", document_length=2048)
    (score,) = scorer.score(QUERY, [words(1500)])
    assert not score.truncated
    clamped = ColBERTScorer(colbert_dir, device="cpu", document_length=100_000)
    assert clamped.document_length == 8192


def test_long_queries_are_cut_to_query_length(scorer: ColBERTScorer) -> None:
    query = scorer.encode_query(words(80))
    assert query.tokens == 48 and query.truncated


@pytest.mark.parametrize(
    "options",
    [{"reduce": "max"}, {"overflow": "wrap"}, {"batch_tokens": 0}, {"document_length": 2},
     {"document_length": 10, "max_length": 10}],
)  # fmt: skip
def test_bad_options_are_rejected(colbert_dir: Path, options: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        ColBERTScorer(colbert_dir, device="cpu", **options)  # type: ignore[arg-type]


# --- end to end through the framework adapters --------------------------------------


def test_langchain_compressor_runs_on_a_colbert_directory(colbert_dir: Path) -> None:
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    texts = [words(n, seed=n) for n in (5, 30, 12)]
    compressor = RerankCompressor(model=str(colbert_dir), model_kwargs={"device": "cpu"})
    out = compressor.compress_documents([Document(page_content=t) for t in texts], QUERY)
    expected = ColBERTScorer(colbert_dir, device="cpu").score(QUERY, texts)
    order = sorted(range(3), key=lambda i: -expected[i].value)
    assert [d.page_content for d in out] == [texts[i] for i in order]
    assert out[0].metadata["rerank_plugins"]["kind"] == "maxsim"


def test_llama_index_postprocessor_runs_on_a_colbert_directory(colbert_dir: Path) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    texts = [words(n, seed=n) for n in (5, 30, 12)]
    post = RerankPostprocessor(model=str(colbert_dir), model_kwargs={"device": "cpu"}, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in texts]
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    assert len(out) == 2 and out[0].score is not None and out[0].score >= out[1].score  # type: ignore[operator]


def test_score_objects_are_scores(scorer: ColBERTScorer) -> None:
    (s,) = scorer.score(QUERY, ["w1 w2"])
    assert isinstance(s, Score) and s.kind == "maxsim" and not s.truncated


# --- cache= is the weight-sharing switch; vector_cache= the document-vector cache -------


def test_cache_false_keeps_the_vector_cache_and_loads_private_weights(colbert_dir: Path) -> None:
    shared = ColBERTScorer(colbert_dir, device="cpu")
    private = ColBERTScorer(colbert_dir, device="cpu", cache=False)
    assert private.trunk is not shared.trunk
    assert private.vector_cache is not None and private.vector_cache is not shared.vector_cache


@pytest.mark.parametrize("old", [None, 0, 40_000, "object"])
def test_the_old_cache_spelling_still_sizes_the_vector_cache_with_a_warning(
    colbert_dir: Path, old: Any
) -> None:
    value = DocumentVectorCache(40_000) if old == "object" else old
    with pytest.warns(DeprecationWarning, match="vector_cache"):
        scorer = ColBERTScorer(colbert_dir, device="cpu", cache=value)
    base = ColBERTScorer(colbert_dir, device="cpu")
    assert scorer.trunk is base.trunk  # weights still shared
    if old in (None, 0):
        assert scorer.vector_cache is None
    else:
        assert scorer.vector_cache is not None and scorer.vector_cache.max_bytes == 40_000
    with pytest.warns(DeprecationWarning, match="vector_cache"):
        assert scorer.cache is scorer.vector_cache
    with pytest.raises(InvalidInputError, match="vector_cache"):
        ColBERTScorer(colbert_dir, device="cpu", cache=value, vector_cache=10)
