"""The native ModernBERT engine: parity with transformers (eager, fp32), the scorer contract,
long context, the real tokenizer and linear memory at 32K tokens."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from rerank_plugins import InputTooLongError, load_scorer
from rerank_plugins.errors import InvalidInputError, UnsupportedModelError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine.hf import TransformersPairClassifier
from rerank_plugins.local.engine.modernbert import (
    ModernBertPairClassifier,
    ModernBertSpec,
    load_modernbert,
)
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.local.fill_mask import FillMask
from rerank_plugins.testing import make_modernbert_checkpoint, random_text
from tests.conftest import FIXTURES
from tests.contract import QUERY, PairScorerContract

CPU = torch.device("cpu")
TOLERANCE = 1e-4
RERANKER_FIXTURE = FIXTURES / "Alibaba-NLP__gte-reranker-modernbert-base"

# Configs that exercise every branch: several global and local layers, windows far
# smaller than the documents, both poolings, distinct RoPE thetas.
CONFIGS: dict[str, dict[str, Any]] = {
    "every3-mean": {
        "num_hidden_layers": 6,
        "global_attn_every_n_layers": 3,
        "local_attention": 8,
        "classifier_pooling": "mean",
        "local_rope_theta": 500.0,
    },
    "every2-cls": {
        "num_hidden_layers": 5,
        "global_attn_every_n_layers": 2,
        "local_attention": 16,
        "classifier_pooling": "cls",
        "num_attention_heads": 2,
    },
}


def random_ids(rng: random.Random, lengths: list[int]) -> list[list[int]]:
    """``[CLS] words [SEP]`` id sequences of the word tokenizer (ids 5..304 are words)."""
    return [[2] + [rng.randint(5, 304) for _ in range(n)] + [3] for n in lengths]


LENGTHS = [3, 50, 1, 400, 17, 90, 1200]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def seqcls_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name = request.param
    return make_modernbert_checkpoint(
        tmp_path_factory.mktemp("native") / name, config=CONFIGS[name], seed=3
    )


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modernbert_checkpoint(
        tmp_path_factory.mktemp("native") / "mlm", head="mlm", config=CONFIGS["every3-mean"]
    )


@pytest.fixture(scope="module")
def bare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modernbert_checkpoint(
        tmp_path_factory.mktemp("native") / "bare", head="bare", config=CONFIGS["every2-cls"]
    )


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def same_order(a: list[float], b: list[float]) -> bool:
    return sorted(range(len(a)), key=a.__getitem__) == sorted(range(len(b)), key=b.__getitem__)


# --- parity with transformers -----------------------------------------------------------


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_classifier_logits_match_transformers(seqcls_dir: Path) -> None:
    seqs = random_ids(random.Random(0), LENGTHS)
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(seqcls_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    ours = load_modernbert(seqcls_dir)
    assert ours.layout == "seq-cls"
    with torch.inference_mode():
        got = ours.classify(pack_sequences(seqs, CPU))[:, 0]
        want = torch.stack([ref(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    assert max_abs(got, want) <= TOLERANCE
    assert same_order(got.tolist(), want.tolist())


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_scorer_matches_transformers_reference(seqcls_dir: Path, docs: list[str]) -> None:
    from tests.local.test_cross_encoder import reference_logits

    scorer = CrossEncoderScorer(seqcls_dir, device="cpu", engine="native", output="logit")
    assert isinstance(scorer.classifier, ModernBertPairClassifier)
    ours = [s.value for s in scorer.score(QUERY, docs)]
    ref = reference_logits(seqcls_dir, QUERY, docs)
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= TOLERANCE
    assert same_order(ours, ref)


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_masked_lm_logits_match_transformers_at_asked_positions(mlm_dir: Path) -> None:
    seqs = random_ids(random.Random(1), [30, 7, 300])
    ref = transformers.AutoModelForMaskedLM.from_pretrained(
        str(mlm_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    ours = load_modernbert(mlm_dir)
    assert ours.layout == "mlm" and ours.classifier is None
    batch = pack_sequences(seqs, CPU)
    positions = torch.tensor([0, 5, 29, 31, 40, 300, batch.num_tokens - 1])
    with torch.inference_mode():
        got = ours.masked_lm_logits(batch, positions)
        full = torch.cat([ref(input_ids=torch.tensor([s])).logits[0] for s in seqs])
    assert got.shape == (len(positions), ours.spec.vocab_size)
    assert max_abs(got, full[positions]) <= TOLERANCE


@pytest.mark.parametrize("prefixed", [False, True])
def test_bare_trunk_matches_transformers_with_and_without_prefix(
    bare_dir: Path, tmp_path: Path, prefixed: bool
) -> None:
    directory = bare_dir
    if prefixed:  # the same encoder, stored under "model." as the task models do
        directory = tmp_path / "prefixed"
        shutil.copytree(bare_dir, directory)
        state = load_file(str(bare_dir / "model.safetensors"))
        save_file({f"model.{k}": v for k, v in state.items()}, str(directory / "model.safetensors"))
    seqs = random_ids(random.Random(2), [40, 3, 150])
    ref = transformers.ModernBertModel.from_pretrained(
        str(bare_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    ours = load_modernbert(directory)
    assert ours.layout == "bare" and ours.head is None
    with torch.inference_mode():
        got = ours.trunk.encode(pack_sequences(seqs, CPU))
        want = torch.cat([ref(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
    assert max_abs(got, want) <= TOLERANCE


def test_early_exit_matches_intermediate_layer_and_skips_the_rest(bare_dir: Path) -> None:
    seqs = random_ids(random.Random(3), [60, 9])
    ref = transformers.ModernBertModel.from_pretrained(
        str(bare_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    ours = load_modernbert(bare_dir)
    depth = 2

    def boom(*args: object) -> None:
        raise AssertionError("a layer past the exit ran")

    for layer in list(ours.trunk.layers)[depth:]:
        for module in layer.modules():
            module.register_forward_pre_hook(boom)
    batch = pack_sequences(seqs, CPU)
    with torch.inference_mode():
        raw = ours.trunk.encode(batch, num_layers=depth, final_norm=False)
        normed = ours.trunk.encode(batch, num_layers=depth)
        outs = [ref(input_ids=torch.tensor([s]), output_hidden_states=True) for s in seqs]
        want = torch.cat([o.hidden_states[depth][0] for o in outs])  # [0] is the embeddings
        want_normed = ref.final_norm(want)
    assert max_abs(raw, want) <= TOLERANCE
    assert max_abs(normed, want_normed) <= TOLERANCE


def test_transformers_4_config_style_is_read_like_transformers_5() -> None:
    old = {
        "num_hidden_layers": 4,
        "global_attn_every_n_layers": 3,
        "local_attention": 128,
        "global_rope_theta": 160000.0,
        "local_rope_theta": 10000.0,
    }
    new = {
        "num_hidden_layers": 4,
        "local_attention": 128,
        "layer_types": [
            "full_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
        ],
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 160000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    }
    a, b = ModernBertSpec.from_config(old), ModernBertSpec.from_config(new)
    assert a == b
    assert a.windows == (None, 64, 64, None)
    assert a.thetas == (160000.0, 10000.0, 10000.0, 160000.0)


def test_unsupported_configs_are_rejected() -> None:
    with pytest.raises(UnsupportedModelError):
        ModernBertSpec.from_config({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(UnsupportedModelError):
        ModernBertSpec.from_config({"hidden_activation": "mystery"})


def test_masked_lm_checkpoint_is_not_a_cross_encoder(mlm_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="classification head"):
        CrossEncoderScorer(mlm_dir, device="cpu")


# --- routing and the contract -----------------------------------------------------------


def test_modernbert_runs_native_by_default_and_transformers_on_request(
    modernbert_dir: Path,
) -> None:
    scorer = load_scorer(str(modernbert_dir), device="cpu")
    assert isinstance(scorer, CrossEncoderScorer)
    assert isinstance(scorer.classifier, ModernBertPairClassifier)
    assert scorer.classifier.padded is False
    other = CrossEncoderScorer(modernbert_dir, device="cpu", engine="transformers")
    assert isinstance(other.classifier, TransformersPairClassifier)


class TestNativeCrossEncoder(PairScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, modernbert_dir: Path) -> CrossEncoderScorer:
        return CrossEncoderScorer(modernbert_dir, device="cpu", engine="native")


def test_batch_budget_does_not_change_scores(modernbert_dir: Path, docs: list[str]) -> None:
    big = CrossEncoderScorer(modernbert_dir, device="cpu", engine="native")
    small = CrossEncoderScorer(modernbert_dir, device="cpu", engine="native", batch_tokens=1)
    assert [s.value for s in big.score(QUERY, docs)] == pytest.approx(
        [s.value for s in small.score(QUERY, docs)], abs=1e-5
    )


# --- long context -----------------------------------------------------------------------


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_long_document_is_seen_to_its_end_and_cut_at_the_window(modernbert_dir: Path) -> None:
    rng = random.Random(8)
    scorer = CrossEncoderScorer(modernbert_dir, device="cpu", output="logit")
    assert scorer.max_length == 8192
    words = random_text(rng, 8150).split()
    changed = [*words[:-5], *random_text(rng, 5).split()]
    first, second = scorer.score(QUERY, [" ".join(words), " ".join(changed)])
    assert first.tokens == second.tokens == 8150 + 4 + 3 > 8000
    assert not first.truncated and not second.truncated
    assert abs(first.value - second.value) > 1e-6  # the last tokens reached the score
    over = scorer.score(QUERY, [" ".join(words + words[:100])])[0]
    assert over.truncated and over.tokens == 8192
    strict = CrossEncoderScorer(modernbert_dir, device="cpu", overflow="error")
    with pytest.raises(InputTooLongError):
        strict.score(QUERY, ["w1", " ".join(words + words[:100])])


_MEMORY_PROBE = """
import json, resource, sys
import torch
import torch.nn.functional as F
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine import attention as attn
from rerank_plugins.testing import make_modernbert_checkpoint, random_text
import random

n = 32768
directory = make_modernbert_checkpoint(sys.argv[1], config={
    "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 24,
    "num_hidden_layers": 2, "max_position_embeddings": n})
scorer = CrossEncoderScorer(directory, device="cpu", output="logit")
doc = random_text(random.Random(0), n)
largest = []
real = F.scaled_dot_product_attention
def spy(q, k, v, attn_mask=None, **kw):
    sizes = [q.numel(), k.numel()] + ([] if attn_mask is None else [attn_mask.numel()])
    largest.append(max(sizes))
    return real(q, k, v, attn_mask=attn_mask, **kw)
attn.F.scaled_dot_product_attention = spy
scorer.score("w1 w2", ["w3"])  # warm up allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
score = scorer.score("w1 w2", [doc])[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"tokens": score.tokens, "truncated": score.truncated,
                  "growth": after - before, "largest": max(largest)}))
"""


@pytest.mark.slow
def test_32k_document_runs_on_cpu_without_a_length_squared_allocation(tmp_path: Path) -> None:
    # A fresh process, so that its peak RSS belongs to this forward alone.
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MEMORY_PROBE), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n = 32768
    assert result["tokens"] == n and result["truncated"]
    assert result["largest"] < n * n // 64  # no attention input or mask is L x L
    # One L x L fp32 score matrix per head would be 4 GiB; a bool mask 1 GiB.
    assert result["growth"] < 256 * 2**20, result


# --- the real tokenizer ----------------------------------------------------------------


def scaled_real_checkpoint(source: Path, directory: Path, model_class: Any) -> Path:
    """Random weights for ``source``'s real config.json (layers and width scaled down),
    keeping that config.json's own (transformers 4.x) style and the real tokenizer files."""
    real = json.loads((source / "config.json").read_text())
    scaled = {
        **real,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "local_attention": 16,
        "initializer_range": 0.2,
    }
    keep = {k: v for k, v in scaled.items() if not k.startswith(("_", "transformers_version"))}
    torch.manual_seed(0)
    model_class(transformers.ModernBertConfig(**keep)).save_pretrained(str(directory))
    (directory / "config.json").write_text(json.dumps(scaled, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def real_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (RERANKER_FIXTURE / "config.json").is_file():
        pytest.skip(f"{RERANKER_FIXTURE} is absent")
    return scaled_real_checkpoint(
        RERANKER_FIXTURE,
        tmp_path_factory.mktemp("real") / "gte-reranker-small",
        transformers.ModernBertForSequenceClassification,
    )


def test_real_tokenizer_pair_template_and_parity(real_tokenizer_dir: Path) -> None:
    rng = random.Random(9)
    words = "the of retrieval long context reranker document query model token".split()
    query = "what is a long context reranker?"
    docs = [" ".join(rng.choice(words) for _ in range(n)) for n in (3, 40, 300, 700)]
    scorer = CrossEncoderScorer(real_tokenizer_dir, device="cpu", output="logit")
    assert isinstance(scorer.classifier, ModernBertPairClassifier)
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(real_tokenizer_dir))
    pairs = scorer.encoder.encode(query, docs)
    for pair, doc in zip(pairs, docs, strict=True):
        want = hf_tok(query, doc, truncation=False)["input_ids"]
        assert pair.ids == want
        assert pair.ids[0] == 50281 and pair.ids[-1] == 50282 and pair.ids.count(50282) == 2
    ours = [s.value for s in scorer.score(query, docs)]
    from tests.local.test_cross_encoder import reference_logits

    ref = reference_logits(real_tokenizer_dir, query, docs)
    assert max(abs(a - b) for a, b in zip(ours, ref, strict=True)) <= TOLERANCE
    assert same_order(ours, ref)


# --- fill-mask --------------------------------------------------------------------------


def test_fill_mask_top_k_matches_transformers(mlm_dir: Path) -> None:
    fill = FillMask(mlm_dir, device="cpu")
    texts = ["w1 [MASK] w3 w4", "w9 " * 40 + "[MASK] w2 [MASK]"]
    got = fill.predict_batch(texts, top_k=3)
    assert [len(g) for g in got] == [1, 2]
    tok = transformers.AutoTokenizer.from_pretrained(str(mlm_dir))
    ref = transformers.AutoModelForMaskedLM.from_pretrained(
        str(mlm_dir), attn_implementation="eager", dtype=torch.float32
    ).eval()
    for text, predictions in zip(texts, got, strict=True):
        enc = tok(text, return_tensors="pt")
        with torch.inference_mode():
            probs = ref(**enc).logits[0].softmax(-1)
        where = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten().tolist()
        for pos, preds in zip(where, predictions, strict=True):
            top = probs[pos].topk(3)
            assert [p.token_id for p in preds] == top.indices.tolist()
            assert [p.score for p in preds] == pytest.approx(top.values.tolist(), abs=1e-5)
            assert [p.token for p in preds] == [tok.decode([i]) for i in top.indices.tolist()]
    alone = fill.predict(texts[0], top_k=3)
    assert [p.token_id for p in alone[0]] == [p.token_id for p in got[0][0]]


def test_fill_mask_needs_a_mask(mlm_dir: Path) -> None:
    fill = FillMask(mlm_dir, device="cpu")
    with pytest.raises(InvalidInputError) as info:
        fill.predict_batch(["w1 [MASK]", "w2 w3"])
    assert info.value.indices == (1,)


# --- CUDA (skipped without a GPU) ------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda_only
@pytest.mark.parametrize("backend", ["varlen", "flex", "sdpa"])
def test_cuda_backends_match_the_cpu_engine(seqcls_dir: Path, backend: str) -> None:
    seqs = random_ids(random.Random(4), LENGTHS)
    cuda = torch.device("cuda")
    cpu_model = load_modernbert(seqcls_dir)
    try:
        gpu_model = load_modernbert(seqcls_dir, device=cuda, dtype=torch.bfloat16, backend=backend)
    except InvalidInputError:
        pytest.skip(f"backend {backend!r} is not available on this GPU")
    with torch.inference_mode():
        want = cpu_model.classify(pack_sequences(seqs, CPU))[:, 0]
        got = gpu_model.classify(pack_sequences(seqs, cuda))[:, 0].cpu()
    assert max_abs(got, want) <= 2e-2  # bf16 trunk against the fp32 reference
    # Same ranking, except between documents the reference itself puts within bf16 noise.
    g, w = got.tolist(), want.tolist()
    pairs = [(i, j) for i in range(len(w)) for j in range(len(w)) if w[i] - w[j] > 4e-2]
    assert all(g[i] > g[j] for i, j in pairs)


@cuda_only
def test_cuda_scorer_defaults_to_bf16_and_matches_fp32(seqcls_dir: Path, docs: list[str]) -> None:
    gpu = CrossEncoderScorer(seqcls_dir, device="cuda", output="logit")
    assert isinstance(gpu.classifier, ModernBertPairClassifier)
    assert gpu.dtype == torch.bfloat16
    cpu = CrossEncoderScorer(seqcls_dir, device="cpu", output="logit")
    got = [s.value for s in gpu.score(QUERY, docs)]
    want = [s.value for s in cpu.score(QUERY, docs)]
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 2e-2


def test_fill_mask_with_the_real_modernbert_base_tokenizer(tmp_path: Path) -> None:
    source = FIXTURES / "answerdotai__ModernBERT-base"
    if not (source / "tokenizer.json").is_file():
        pytest.skip(f"{source} is absent")
    directory = scaled_real_checkpoint(
        source, tmp_path / "modernbert-base-small", transformers.ModernBertForMaskedLM
    )
    text = "The capital of France is [MASK]."
    fill = FillMask(directory, device="cpu")
    (predictions,) = fill.predict(text, top_k=5)
    tok = transformers.AutoTokenizer.from_pretrained(str(directory))
    ref = transformers.AutoModelForMaskedLM.from_pretrained(
        str(directory), attn_implementation="eager", dtype=torch.float32
    ).eval()
    enc = tok(text, return_tensors="pt")
    (where,) = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten().tolist()
    with torch.inference_mode():
        top = ref(**enc).logits[0, where].softmax(-1).topk(5)
    assert fill.mask_id == tok.mask_token_id == 50284
    assert [p.token_id for p in predictions] == top.indices.tolist()
    assert [p.score for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-5)
