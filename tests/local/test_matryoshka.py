"""The 2D-Matryoshka reranker (mmbert-rerank-32k-2d-matryoshka): parity at every exit with a
reference built from transformers' ModernBertModel hidden states, the last-layer
normalisation, real early exit, safe heads loading, 32K tokens in one pass, the contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer

from rerank_plugins import InvalidInputError, load_scorer
from rerank_plugins.errors import UnsupportedModelError
from rerank_plugins.local.detect import detect_kind
from rerank_plugins.local.matryoshka import MatryoshkaPairClassifier, MatryoshkaScorer
from rerank_plugins.testing import make_matryoshka_checkpoint
from tests.contract import QUERY, PairScorerContract

TOLERANCE = 1e-4
LAYERS = [1, 2, 4, 8]  # the published [3, 6, 11, 22] scaled to 8 layers
DIMS = [64, 42, 21, 10, 5]  # the published [768, 512, 256, 128, 64] scaled to hidden 64


@pytest.fixture(scope="module")
def mm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 layers (global 0, 3, 6), hidden 64, ±4-token local window, 4 x 5 heads."""
    return make_matryoshka_checkpoint(tmp_path_factory.mktemp("mm") / "mmbert-2d")


# --- the reference: transformers' hidden states + the heads, written out longhand ----------


class Reference:
    """transformers' ``ModernBertModel`` (eager, fp32), one unpadded pair at a time.

    ``states(q, d)[L]`` is the CLS vector after ``L`` layers *before* ``final_norm`` (the
    transformers 4.x meaning of ``hidden_states[L]``, which the heads were trained on).
    transformers 5 puts the normalised output at ``hidden_states[-1]``, so the raw last
    state is taken from ``final_norm``'s input.
    """

    def __init__(self, directory: Path) -> None:
        self.model = transformers.ModernBertModel.from_pretrained(
            str(directory), attn_implementation="eager", dtype=torch.float32
        ).eval()
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.heads = torch.load(str(directory / "classification_heads.pt"), weights_only=True)
        self.num_layers = self.model.config.num_hidden_layers

    def states(self, query: str, doc: str) -> dict[int, torch.Tensor]:
        ids = torch.tensor([self.tokenizer.encode(query, doc).ids])
        raw: list[torch.Tensor] = []
        hook = self.model.final_norm.register_forward_pre_hook(lambda m, a: raw.append(a[0]))
        try:
            with torch.inference_mode():
                out = self.model(input_ids=ids, output_hidden_states=True)
        finally:
            hook.remove()
        assert len(out.hidden_states) == self.num_layers + 1
        states = {i: out.hidden_states[i][0, 0] for i in range(1, self.num_layers)}
        states[self.num_layers] = raw[0][0, 0]
        return states

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            result: torch.Tensor = self.model.final_norm(x)
        return result

    def head(self, layer: int, dim: int, cls: torch.Tensor) -> float:
        p = f"{layer}.{dim}."
        h = self.heads
        x = F.gelu(F.linear(cls[:dim], h[p + "0.weight"], h[p + "0.bias"]))
        return float(F.linear(x, h[p + "3.weight"], h[p + "3.bias"])[0])

    def logits(self, query: str, docs: list[str]) -> dict[tuple[int, int], list[float]]:
        """The published trainer's rule: final_norm(hidden_states[L]) if L < num_layers."""
        out: dict[tuple[int, int], list[float]] = {(L, d): [] for L in LAYERS for d in DIMS}
        for doc in docs:
            states = self.states(query, doc)
            for L in LAYERS:
                cls = states[L] if L == self.num_layers else self.final_norm(states[L])
                for d in DIMS:
                    out[L, d].append(self.head(L, d, cls))
        return out


@pytest.fixture(scope="module")
def reference(mm_dir: Path) -> Reference:
    return Reference(mm_dir)


def order(values: list[float]) -> list[int]:
    return sorted(range(len(values)), key=values.__getitem__)


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
def test_every_exit_matches_the_transformers_reference(
    mm_dir: Path, reference: Reference, docs: list[str]
) -> None:
    assert reference.model.config.layer_types[0] == "full_attention"
    assert {p["rope_theta"] for p in reference.model.config.rope_parameters.values()} == {160000.0}
    expected = reference.logits(QUERY, docs)
    worst = 0.0
    for layer in LAYERS:
        for dim in DIMS:
            scorer = MatryoshkaScorer(mm_dir, layer=layer, dim=dim, device="cpu", output="logit")
            ours = [s.value for s in scorer.score(QUERY, docs)]
            ref = expected[layer, dim]
            delta = max(abs(a - b) for a, b in zip(ours, ref, strict=True))
            worst = max(worst, delta)
            assert delta <= TOLERANCE, (layer, dim, delta)
            assert order(ours) == order(ref), (layer, dim)
    print(f"matryoshka parity: max |delta| over {len(LAYERS) * len(DIMS)} exits = {worst:.2e}")


def test_last_layer_head_reads_the_raw_state_and_earlier_heads_the_normalised_one(
    mm_dir: Path, reference: Reference, docs: list[str]
) -> None:
    """Pins the published semantics: final_norm below the last layer, none at the last."""
    doc = docs[3]
    states = reference.states(QUERY, doc)
    for layer in (LAYERS[-1], LAYERS[1]):
        raw = reference.head(layer, 64, states[layer])
        normed = reference.head(layer, 64, reference.final_norm(states[layer]))
        assert abs(raw - normed) > 1e-2  # the choice is visible on this checkpoint
        ours = MatryoshkaScorer(mm_dir, layer=layer, device="cpu", output="logit")
        value = ours.score(QUERY, [doc])[0].value
        expected = raw if layer == LAYERS[-1] else normed
        assert value == pytest.approx(expected, abs=TOLERANCE), layer


def test_without_final_norm_every_head_reads_the_raw_state(tmp_path: Path, docs: list[str]) -> None:
    directory = make_matryoshka_checkpoint(tmp_path / "raw", matryoshka={"has_final_norm": False})
    reference = Reference(directory)
    states = reference.states(QUERY, docs[1])
    scorer = MatryoshkaScorer(directory, layer=2, dim=21, device="cpu", output="logit")
    value = scorer.score(QUERY, [docs[1]])[0].value
    assert value == pytest.approx(reference.head(2, 21, states[2]), abs=TOLERANCE)


# --- early exit -----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", LAYERS)
def test_early_exit_runs_only_the_first_layers(mm_dir: Path, docs: list[str], layer: int) -> None:
    """The layers past the exit are moved to the meta device (no data): any op that
    touched them would fail, so scoring proves they never run."""
    scorer = MatryoshkaScorer(mm_dir, layer=layer, device="cpu")
    classifier = scorer.classifier
    assert isinstance(classifier, MatryoshkaPairClassifier)
    expected = scorer.score(QUERY, docs)
    layers = classifier.model.trunk.layers
    for block in layers[layer:]:
        block.to("meta")
    assert scorer.score(QUERY, docs) == expected
    if layer < len(layers):  # the poison bites: running one layer more fails
        deeper = MatryoshkaScorer(mm_dir, layer=LAYERS[LAYERS.index(layer) + 1], device="cpu")
        assert isinstance(deeper.classifier, MatryoshkaPairClassifier)
        deeper.classifier.model.trunk.layers[layer].to("meta")
        with pytest.raises(RuntimeError, match="meta"):
            deeper.score(QUERY, docs)


def test_default_exit_is_the_full_model(mm_dir: Path) -> None:
    scorer = MatryoshkaScorer(mm_dir, device="cpu")
    assert (scorer.layer, scorer.dim) == (8, 64)
    assert scorer.max_length == 32768


@pytest.mark.parametrize(
    ("layer", "dim", "named"), [(3, None, "[1, 2, 4, 8]"), (None, 32, "[64, 42, 21, 10, 5]")]
)
def test_exits_off_the_grid_are_rejected_with_the_choices(
    mm_dir: Path, layer: int | None, dim: int | None, named: str
) -> None:
    with pytest.raises(InvalidInputError, match=named.replace("[", r"\[")):
        MatryoshkaScorer(mm_dir, layer=layer, dim=dim, device="cpu")


# --- scores, loading, files ------------------------------------------------------------------


def test_probability_is_sigmoid_of_logit(mm_dir: Path, docs: list[str]) -> None:
    prob = MatryoshkaScorer(mm_dir, layer=4, dim=21, device="cpu")
    logit = MatryoshkaScorer(mm_dir, layer=4, dim=21, device="cpu", output="logit")
    for p, lg in zip(prob.score(QUERY, docs), logit.score(QUERY, docs), strict=True):
        assert p.kind == "probability" and lg.kind == "logit"
        assert p.value == pytest.approx(float(torch.sigmoid(torch.tensor(lg.value))), abs=1e-6)


def test_load_scorer_picks_the_matryoshka_scorer_from_its_files(
    mm_dir: Path, tmp_path: Path
) -> None:
    assert detect_kind(mm_dir) == "matryoshka"
    scorer = load_scorer(str(mm_dir), device="cpu", layer=2, dim=10)
    assert isinstance(scorer, MatryoshkaScorer) and (scorer.layer, scorer.dim) == (2, 10)
    # Without its heads file the directory is a bare encoder, not a reranker.
    bare = tmp_path / "bare"
    shutil.copytree(mm_dir, bare)
    (bare / "classification_heads.pt").unlink()
    with pytest.raises(UnsupportedModelError):
        detect_kind(bare)


class _Payload:
    """Pickles to a call of ``os.mkdir``: what a hostile heads file could run on load."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (self.path,)


def test_heads_file_with_pickled_code_is_refused_and_not_run(mm_dir: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(mm_dir, evil)
    marker = tmp_path / "pwned"
    heads = torch.load(str(mm_dir / "classification_heads.pt"), weights_only=True)
    heads["8.64.0.weight"] = _Payload(str(marker))
    torch.save(heads, str(evil / "classification_heads.pt"))
    with pytest.raises(UnsupportedModelError, match="weights_only"):
        MatryoshkaScorer(evil, device="cpu")
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler would have run it.
    torch.load(str(evil / "classification_heads.pt"), weights_only=False)
    assert marker.is_dir()


def test_missing_or_misshapen_heads_are_named(mm_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(mm_dir, broken)
    heads = torch.load(str(mm_dir / "classification_heads.pt"), weights_only=True)
    del heads["4.21.3.bias"]
    heads["2.10.0.weight"] = torch.zeros(3, 3)
    torch.save(heads, str(broken / "classification_heads.pt"))
    with pytest.raises(UnsupportedModelError, match=r"4\.21\.3\.bias"):
        MatryoshkaScorer(broken, layer=4, dim=21, device="cpu")
    with pytest.raises(UnsupportedModelError, match=r"2\.10"):
        MatryoshkaScorer(broken, layer=2, dim=10, device="cpu")
    MatryoshkaScorer(broken, layer=8, dim=64, device="cpu")  # other heads still load


@pytest.mark.parametrize(
    "change",
    [
        {"layer_indices": [1, 9]},
        {"dim_indices": [128, 64]},
        {"num_layers": 22},
        {"pooling_strategy": "max"},
        {"layer_indices": "3,6"},
    ],
)
def test_inconsistent_matryoshka_config_is_refused(
    mm_dir: Path, tmp_path: Path, change: dict[str, object]
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(mm_dir, bad)
    data = json.loads((mm_dir / "matryoshka_config.json").read_text())
    (bad / "matryoshka_config.json").write_text(json.dumps({**data, **change}))
    with pytest.raises(UnsupportedModelError, match="matryoshka_config"):
        MatryoshkaScorer(bad, device="cpu")


def test_framework_adapters_run_an_early_exit(mm_dir: Path, docs: list[str]) -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    options = {"device": "cpu", "layer": 2, "dim": 21}
    expected = MatryoshkaScorer(mm_dir, **options).score(QUERY, docs)  # type: ignore[arg-type]
    best = max(range(len(docs)), key=lambda i: expected[i].value)
    compressor = RerankCompressor(model=str(mm_dir), model_kwargs=options, top_n=2)
    kept = compressor.compress_documents([Document(page_content=d) for d in docs], QUERY)
    assert kept[0].page_content == docs[best]
    assert kept[0].metadata["relevance_score"] == pytest.approx(expected[best].value, abs=1e-6)
    post = RerankPostprocessor(model=str(mm_dir), model_kwargs=options, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}")) for i, d in enumerate(docs)]
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert out[0].node.node_id == f"n{best}"


# --- 32K tokens in one pass -----------------------------------------------------------------

_LONG_PROBE = """
import json, random, resource, sys
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from rerank_plugins.local.matryoshka import MatryoshkaScorer
from rerank_plugins.testing import make_matryoshka_checkpoint, random_text

n = 32768
directory = make_matryoshka_checkpoint(sys.argv[1], config={
    "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 24,
    "num_hidden_layers": 4, "local_attention": 128})

class Largest(TorchDispatchMode):
    # The largest tensor any op produces (an L x L score matrix or mask would show here).
    largest = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                Largest.largest = max(Largest.largest, t.numel())
        return out

scorer = MatryoshkaScorer(directory, device="cpu", output="logit")
doc = random_text(random.Random(0), n)  # longer than the window once the query is added
scorer.score("w1 w2", ["w3"])  # warm up allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with Largest():
    score = scorer.score("w1 w2", [doc])[0]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"tokens": score.tokens, "truncated": score.truncated, "value": score.value,
                  "window": scorer.max_length, "growth": after - before,
                  "largest": Largest.largest}))
"""


@pytest.mark.slow
def test_32k_document_scores_in_one_pass_on_cpu_without_a_length_squared_tensor(
    tmp_path: Path,
) -> None:
    # A fresh process, so that its peak RSS belongs to this forward alone.
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_LONG_PROBE), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    n = 32768
    assert result["window"] == n
    assert result["tokens"] == n and result["truncated"]
    assert abs(result["value"]) < 1e3  # finite
    # No op output is L x L: the largest is one block of the CPU fast path's attention,
    # 256 queries x n keys x 2 heads (linear in n; an L x L score matrix is 64 times it).
    assert result["largest"] <= 2 * 256 * n < n * n // 32, result
    assert result["growth"] < 256 * 2**20, result  # an L x L fp32 matrix alone is 4 GiB


# --- the contract -----------------------------------------------------------------------------


class TestMatryoshkaScorer(PairScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, mm_dir: Path) -> MatryoshkaScorer:
        return MatryoshkaScorer(mm_dir, device="cpu")


class TestMatryoshkaEarlyExit(PairScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls, mm_dir: Path) -> MatryoshkaScorer:
        return MatryoshkaScorer(mm_dir, layer=2, dim=10, device="cpu")
