"""Decoder rerankers (Qwen3-Reranker, mxbai-rerank-v2): the model cards' procedures as
references for token ids and scores, the prefix cache, recognition, the contract."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import transformers

from rerank_plugins import InputTooLongError, InvalidInputError, load_scorer
from rerank_plugins.local.decoder import DecoderScorer, hub_id_of
from rerank_plugins.local.decoder_prompt import (
    MXBAI_PREFIX,
    MXBAI_SUFFIX,
    MXBAI_TASK,
    QWEN3_INSTRUCTION,
    QWEN3_PREFIX,
    QWEN3_SUFFIX,
    DecoderPair,
    template_for,
)
from rerank_plugins.testing import (
    make_mxbai_v2_checkpoint,
    make_qwen3_reranker_checkpoint,
    random_text,
)
from tests.contract import QUERY, ScorerContract

# Documents whose first characters sit right after the template's "<Document>: ".
TRICKY = [
    "w1 w2 w3",
    ".,;: punctuation first",
    "12345 digits first",
    "\n\nnewlines first",
    " a leading space",
    "  two spaces",
    "日本語の文書です",
    "Ünïcödé e\u0301 combining",
    "'s contraction",
    ">>> arrows",
    "yes",
    "",
    "\t\ttabs",
    "<think>\n\n</think>",
    "Привет мир",
    "emoji 🙂 here",
]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3-reranker")


@pytest.fixture(scope="module")
def mxbai_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mxbai_v2_checkpoint(tmp_path_factory.mktemp("ckpt") / "mxbai-rerank-v2")


@pytest.fixture(scope="module")
def qwen3_untied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "qwen3-untied",
        config={"tie_word_embeddings": False, "attention_bias": True},
        seed=3,
    )


# --- the model cards' procedures (transformers' own tokenizer and model) ------------------


def qwen3_card_inputs(
    directory: Path, query: str, docs: list[str], *, max_length: int, instruction: str | None
) -> list[list[int]]:
    """Qwen3-Reranker's card: prefix, content and suffix tokenised apart, the content
    truncated to the window left by the template."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), padding_side="left")
    prefix = tok.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix = tok.encode(QWEN3_SUFFIX, add_special_tokens=False)
    instruction = QWEN3_INSTRUCTION if instruction is None else instruction
    pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {d}" for d in docs]
    inputs = tok(
        pairs,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )
    return [prefix + ids + suffix for ids in inputs["input_ids"]]


def mxbai_card_inputs(
    directory: Path, query: str, docs: list[str], *, max_length: int, instruction: str | None
) -> list[list[int]]:
    """mxbai-rerank-v2's ``prepare_inputs``: query, separator and document tokenised apart
    (``max_length`` here is the whole window, the package's content length plus its
    template)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    sep, task = ids("\n"), ids(MXBAI_TASK)
    prefix, suffix = ids(MXBAI_PREFIX), ids(MXBAI_SUFFIX)
    content = max_length - len(prefix) - len(task) - len(suffix) - len(sep)
    query_text = f"query: {query}"
    if instruction:
        query_text = f"instruction: {instruction}\n{query_text}"
    q = ids(query_text)
    out = []
    for d in docs:
        doc = tok(f"document: {d}", add_special_tokens=False, truncation=True, max_length=content)
        # prepare_for_model(q, sep + doc, truncation="only_second", max_length=content),
        # which transformers 5 no longer has: the second part is cut from its end.
        second = sep + doc["input_ids"]
        item = q + second[: max(0, content - len(q))]
        out.append(prefix + item + sep + task + suffix)
    return out


def card_logits(directory: Path, inputs: list[list[int]], answers: tuple[str, str]) -> list[float]:
    """The cards' scoring: left-padded batch, eager fp32, logits at the last position,
    positive minus negative (for Qwen3, log-softmax over (no, yes) is the same order)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(directory), padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    ).eval()
    neg, pos = tok.convert_tokens_to_ids(list(answers))
    batch = tok.pad({"input_ids": inputs}, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**batch).logits[:, -1, :]
    return (last[:, pos] - last[:, neg]).tolist()


def long_tailed(rng: random.Random) -> list[str]:
    return [random_text(rng, n) for n in (3, 40, 1, 150, 12, 400, 7, 60)] + TRICKY


# --- token ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("instruction", [None, "Find the passage that answers it"])
@pytest.mark.parametrize("max_length", [8192, 160])
def test_qwen3_ids_equal_the_cards_procedure(
    qwen3_dir: Path, instruction: str | None, max_length: int
) -> None:
    rng = random.Random(7)
    docs = long_tailed(rng)
    scorer = DecoderScorer(qwen3_dir, device="cpu", max_length=max_length)
    for query in (QUERY, "what is w7?", "日本語の質問"):
        _, pairs = scorer.prompt.encode(query, docs, instruction=instruction)
        card = qwen3_card_inputs(
            qwen3_dir, query, docs, max_length=max_length, instruction=instruction
        )
        assert [p.ids for p in pairs] == card
        assert all(p.shared for p in pairs)  # Qwen's split never merges across "<Document>: "
        assert all(len(p.ids) <= max_length for p in pairs)
        assert any(p.truncated for p in pairs) == (max_length == 160)


@pytest.mark.parametrize("instruction", [None, "Find the passage that answers it"])
@pytest.mark.parametrize("max_length", [8192, 160])
def test_mxbai_ids_equal_the_packages_procedure(
    mxbai_dir: Path, instruction: str | None, max_length: int
) -> None:
    rng = random.Random(8)
    docs = long_tailed(rng)
    scorer = DecoderScorer(mxbai_dir, device="cpu", max_length=max_length)
    assert scorer.template.name == "qwen3-reranker"  # a local directory: no hub id, default
    scorer = DecoderScorer(
        mxbai_dir, device="cpu", max_length=max_length, template="mxbai-rerank-v2"
    )
    for query in (QUERY, "what is w7?", "日本語の質問"):
        _, pairs = scorer.prompt.encode(query, docs, instruction=instruction)
        card = mxbai_card_inputs(
            mxbai_dir, query, docs, max_length=max_length, instruction=instruction
        )
        assert [p.ids for p in pairs] == card
        assert all(p.shared for p in pairs)


def test_long_documents_are_cut_and_the_suffix_kept(qwen3_dir: Path) -> None:
    scorer = DecoderScorer(qwen3_dir, device="cpu", max_length=128)
    suffix = scorer.prompt.tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False).ids
    long = random_text(random.Random(2), 500)
    scores = scorer.score(QUERY, [long, "w1"])
    assert scores[0].truncated and scores[0].tokens == 128
    assert not scores[1].truncated and scores[1].tokens < 128
    _, pairs = scorer.prompt.encode(QUERY, [long])
    assert pairs[0].ids[-len(suffix) :] == suffix
    with pytest.raises(InputTooLongError) as info:
        DecoderScorer(qwen3_dir, device="cpu", max_length=128, overflow="error").score(
            QUERY, ["w1", long]
        )
    assert info.value.indices == (1,)


def test_a_query_that_leaves_no_room_raises(qwen3_dir: Path) -> None:
    scorer = DecoderScorer(qwen3_dir, device="cpu", max_length=128)
    with pytest.raises(InputTooLongError, match="shorten the query"):
        scorer.score(random_text(random.Random(3), 200), ["w1"])


# --- scores --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_qwen3_logits_match_the_cards_transformers_code(
    qwen3_dir: Path, prefix_cache: bool
) -> None:
    docs = long_tailed(random.Random(11))
    scorer = DecoderScorer(
        qwen3_dir, device="cpu", output="logit", prefix_cache=prefix_cache, batch_tokens=700
    )
    ours = [s.value for s in scorer.score(QUERY, docs)]
    inputs = qwen3_card_inputs(qwen3_dir, QUERY, docs, max_length=8192, instruction=None)
    ref = card_logits(qwen3_dir, inputs, ("no", "yes"))
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1e-4


def test_qwen3_probability_is_p_yes_over_no_yes(qwen3_dir: Path) -> None:
    docs = ["w1 w2", "w3", "a longer w4 w5 w6 document"]
    prob = DecoderScorer(qwen3_dir, device="cpu").score(QUERY, docs)
    inputs = qwen3_card_inputs(qwen3_dir, QUERY, docs, max_length=8192, instruction=None)
    tok = transformers.AutoTokenizer.from_pretrained(str(qwen3_dir), padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(qwen3_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    no, yes = tok.convert_tokens_to_ids(["no", "yes"])
    batch = tok.pad({"input_ids": inputs}, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model(**batch).logits[:, -1, :]
    # The card: log_softmax over [no, yes], exp of the yes column.
    card = torch.log_softmax(torch.stack([last[:, no], last[:, yes]], dim=1), dim=1)[:, 1].exp()
    assert [s.value for s in prob] == pytest.approx(card.tolist(), abs=1e-5)
    assert all(s.kind == "probability" for s in prob)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_mxbai_logits_match_the_packages_transformers_code(
    mxbai_dir: Path, prefix_cache: bool
) -> None:
    docs = long_tailed(random.Random(12))
    scorer = DecoderScorer(
        mxbai_dir,
        device="cpu",
        output="logit",
        template="mxbai-rerank-v2",
        prefix_cache=prefix_cache,
        instruction="Find it",
    )
    ours = [s.value for s in scorer.score(QUERY, docs)]
    inputs = mxbai_card_inputs(mxbai_dir, QUERY, docs, max_length=8192, instruction="Find it")
    ref = card_logits(mxbai_dir, inputs, ("0", "1"))
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1e-4


def test_untied_head_and_qkv_bias_match_transformers(qwen3_untied_dir: Path) -> None:
    docs = long_tailed(random.Random(13))
    scorer = DecoderScorer(qwen3_untied_dir, device="cpu", output="logit")
    ours = [s.value for s in scorer.score(QUERY, docs)]
    inputs = qwen3_card_inputs(qwen3_untied_dir, QUERY, docs, max_length=8192, instruction=None)
    ref = card_logits(qwen3_untied_dir, inputs, ("no", "yes"))
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= 1e-4


@pytest.mark.parametrize("template", ["qwen3-reranker", "mxbai-rerank-v2"])
def test_prefix_cache_on_equals_off(qwen3_dir: Path, template: str) -> None:
    rng = random.Random(21)
    docs = [random_text(rng, rng.randint(1, 60)) for _ in range(30)] + TRICKY
    on = DecoderScorer(qwen3_dir, device="cpu", template=template, batch_tokens=400)
    off = DecoderScorer(
        qwen3_dir, device="cpu", template=template, batch_tokens=400, prefix_cache=False
    )
    for query in (QUERY, "another w9 w10 query"):
        a = [s.value for s in on.score(query, docs)]
        b = [s.value for s in off.score(query, docs)]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-5


def test_documents_not_extending_the_shared_prefix_are_scored_whole(qwen3_dir: Path) -> None:
    """A pair whose ids do not start with the shared prefix (a BPE merge across the
    boundary) runs unshared, beside shared ones, with the same score it gets alone."""
    scorer = DecoderScorer(qwen3_dir, device="cpu", output="logit")
    docs = ["w1 w2", "w3 w4 w5", "w6"]
    shared, pairs = scorer.prompt.encode(QUERY, docs)
    mixed = [pairs[0], DecoderPair(pairs[1].ids, pairs[1].truncated, shared=False), pairs[2]]
    together = scorer._logits(shared, mixed)
    alone = scorer._logits(shared, [pairs[1]])
    assert together[1] == pytest.approx(alone[0], abs=1e-5)
    assert together == pytest.approx(scorer._logits(shared, pairs), abs=1e-5)


def test_instruction_changes_scores_and_per_call_overrides(qwen3_dir: Path) -> None:
    docs = ["w1 w2", "w3 w4 w5"]
    default = DecoderScorer(qwen3_dir, device="cpu")
    told = DecoderScorer(qwen3_dir, device="cpu", instruction="Judge w-words")
    a = [s.value for s in default.score(QUERY, docs)]
    b = [s.value for s in told.score(QUERY, docs)]
    assert a != pytest.approx(b, abs=1e-6)
    assert [s.value for s in default.score(QUERY, docs, instruction="Judge w-words")] == b
    with pytest.raises(InvalidInputError):
        DecoderScorer(qwen3_dir, device="cpu", instruction=3)  # type: ignore[arg-type]


# --- recognition ---------------------------------------------------------------------------


def test_load_scorer_recognizes_causal_lm_checkpoints(qwen3_dir: Path, mxbai_dir: Path) -> None:
    for directory in (qwen3_dir, mxbai_dir):
        scorer = load_scorer(directory, device="cpu")
        assert isinstance(scorer, DecoderScorer)
        assert scorer.template.name == "qwen3-reranker"
    forced = load_scorer(mxbai_dir, device="cpu", template="mxbai-rerank-v2")
    assert isinstance(forced, DecoderScorer) and forced.template.name == "mxbai-rerank-v2"
    with pytest.raises(InvalidInputError, match="unknown template"):
        load_scorer(mxbai_dir, device="cpu", template="llama")


def test_hub_ids_pick_their_template(tmp_path: Path, mxbai_dir: Path) -> None:
    assert template_for(None, hub_id="mixedbread-ai/mxbai-rerank-large-v2").name == (
        "mxbai-rerank-v2"
    )
    assert template_for(None, hub_id="Qwen/Qwen3-Reranker-8B").name == "qwen3-reranker"
    assert template_for(None, hub_id="someone/other-causal-lm").name == "qwen3-reranker"
    # A checkpoint in the hub cache layout is recognised from its path.
    snapshot = tmp_path / "models--mixedbread-ai--mxbai-rerank-base-v2" / "snapshots" / "abc"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(mxbai_dir, target_is_directory=True)
    assert hub_id_of(str(snapshot), snapshot) == "mixedbread-ai/mxbai-rerank-base-v2"
    scorer = load_scorer(snapshot, device="cpu")
    assert isinstance(scorer, DecoderScorer) and scorer.template.name == "mxbai-rerank-v2"


def test_scorer_pickles_with_its_template(mxbai_dir: Path) -> None:
    import pickle

    scorer = DecoderScorer(mxbai_dir, device="cpu", template="mxbai-rerank-v2")
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy.template.name == "mxbai-rerank-v2"
    assert copy.score(QUERY, ["w1"]) == scorer.score(QUERY, ["w1"])


# --- the contract --------------------------------------------------------------------------


class TestQwen3Decoder(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, qwen3_dir: Path) -> DecoderScorer:
        return DecoderScorer(qwen3_dir, device="cpu", batch_tokens=600)


class TestMxbaiDecoder(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, mxbai_dir: Path) -> DecoderScorer:
        return DecoderScorer(mxbai_dir, device="cpu", template="mxbai-rerank-v2")


class TestQwen3DecoderNoPrefixCache(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, qwen3_dir: Path) -> DecoderScorer:
        return DecoderScorer(qwen3_dir, device="cpu", prefix_cache=False)


def test_scores_are_finite_probabilities(qwen3_dir: Path, docs: list[str]) -> None:
    scores = DecoderScorer(qwen3_dir, device="cpu").score(QUERY, docs)
    assert all(0.0 < s.value < 1.0 and math.isfinite(s.value) for s in scores)


@pytest.mark.parametrize(
    ("dtype", "features", "tolerance"), [("int8", "INT8", 0.05), ("bfloat16", "BF16", 0.05)]
)
def test_cpu_modes_stay_close_to_float32(
    qwen3_dir: Path, dtype: str, features: str, tolerance: float
) -> None:
    from rerank_plugins.local.engine import precision

    if not precision.cpu_features() & getattr(precision, f"{features}_FEATURES"):
        pytest.skip(f"this CPU has no native {dtype}")
    docs = long_tailed(random.Random(31))
    fp32 = [s.value for s in DecoderScorer(qwen3_dir, device="cpu").score(QUERY, docs)]
    fast = DecoderScorer(qwen3_dir, device="cpu", dtype=dtype)
    assert fast.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    int8 = [m for m in fast.model.trunk.modules() if isinstance(m, precision.Int8DynamicLinear)]
    assert len(int8) == (2 * 7 if dtype == "int8" else 0)  # 2 layers x 7 projections
    values = [s.value for s in fast.score(QUERY, docs)]
    assert max(abs(a - b) for a, b in zip(values, fp32, strict=True)) <= tolerance


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"num_key_value_heads": 3}, "CheckpointError", "not a multiple"),
        ({"head_dim": 0}, "CheckpointError", "head_dim"),
        ({"model_type": "llama"}, "UnsupportedModelError", "not a Qwen2/Qwen3 config"),
        ({"use_sliding_window": True}, "UnsupportedModelError", "use_sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "UnsupportedModelError", "yarn"),
        ({"tie_word_embeddings": False}, "UnsupportedModelError", "no lm_head.weight"),
        ({"attention_bias": True}, "UnsupportedModelError", "lacks"),
    ],
)
def test_broken_or_unsupported_configs_raise_typed_errors(
    qwen3_dir: Path, tmp_path: Path, change: dict[str, object], error: str, message: str
) -> None:
    import json
    import shutil

    import rerank_plugins.errors as errors

    copy = tmp_path / "ckpt"
    shutil.copytree(qwen3_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(getattr(errors, error), match=message):
        load_scorer(copy, device="cpu", cache=False)


def test_identity_tells_decoder_scorers_apart_by_what_changes_scores(qwen3_dir: Path) -> None:
    # A resumed bulk run and a calibration file are checked against identity(): every option
    # that changes a decoder's scores must show in it, the checkpoint by content.
    from rerank_plugins.identity import scorer_identity
    from rerank_plugins.local.decoder import DecoderScorer

    base = DecoderScorer(qwen3_dir, device="cpu")
    same = DecoderScorer(str(qwen3_dir.resolve()) + "/", device="cpu", cache=False)
    assert scorer_identity(base) == scorer_identity(same)
    assert scorer_identity(base)["sha256"]
    for changed in (
        {"instruction": "Find passages about planets"},
        {"output": "logit"},
        {"overflow": "chunk"},
        {"max_tokens_per_doc": 8},
        {"template": "mxbai-rerank-v2"},
    ):
        other = DecoderScorer(qwen3_dir, device="cpu", **changed)  # type: ignore[arg-type]
        assert scorer_identity(other) != scorer_identity(base), changed
