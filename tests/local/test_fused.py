"""The CPU fast path: Inductor-fused elementwise steps and oneDNN Graph attention.

Every fused step and the oneDNN attention are checked against their eager definition (and
torch's SDPA); the engine with both is checked against the eager engine in each mode and
against transformers; the fallbacks (no compiler, a failing trace, long keys, the
``RERANK_PLUGINS_COMPILE`` switch) are checked to keep the scores.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers

from rerank_plugins.errors import UnsupportedDeviceError
from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.local.engine import fused
from rerank_plugins.local.engine import onednn_attention as oa
from rerank_plugins.local.engine.modernbert import activation, load_modernbert
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.local.engine.precision import INT8_FEATURES, cpu_features
from rerank_plugins.scoring import preemptible
from rerank_plugins.testing import make_modernbert_checkpoint, random_text
from tests.contract import QUERY

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not oa.onednn_available(), reason="no oneDNN Graph fuser")
has_int8 = pytest.mark.skipif(
    not cpu_features() & INT8_FEATURES, reason="this CPU has no int8 dot products"
)

# Local windows (16 -> keys within +-8) far shorter than the sequences, three global and
# two local layers, biases everywhere: every branch of the fused layer.
CONFIG = {
    "num_hidden_layers": 5,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "global_attn_every_n_layers": 2,
    "local_attention": 16,
    "classifier_pooling": "mean",
    "attention_bias": True,
    "mlp_bias": True,
    "norm_bias": True,
    "initializer_range": 0.05,
}
LENGTHS = [3, 50, 1, 400, 17, 90, 1300, 33, 33]


@pytest.fixture(autouse=True)
def compile_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling allowed (inline: from the first large forward; the background default has
    its own tests), and the size floors at zero: the tiny test models take the fast path as
    full-size ones do (the floors have their own test)."""
    monkeypatch.setenv(fused.COMPILE_ENV, "inline")
    monkeypatch.setattr(fused, "FUSE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(oa, "MIN_KEYS", 1)


def test_short_forwards_stay_eager_and_on_torch_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    assert not fused.worth_fusing(CPU, 100, 384)  # a short request to a small model
    assert fused.worth_fusing(CPU, 4096, 384) == fused.fusion_enabled(CPU)
    short, long = torch.randn(4, 2, 60, 16), torch.randn(4, 2, 512, 16)
    assert not oa.eligible(short, short)
    assert oa.eligible(long, long) == (fused.fusion_enabled(CPU) and oa.onednn_available())
    before = len(oa._traced)
    oa.sdpa(short, short, short, None, 0.25)
    assert len(oa._traced) == before  # nothing traced for it


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modernbert_checkpoint(tmp_path_factory.mktemp("fused") / "m", config=CONFIG)


def ids(lengths: list[int]) -> list[list[int]]:
    rng = random.Random(0)
    return [[2] + [rng.randint(5, 304) for _ in range(n)] + [3] for n in lengths]


# --- the switch --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "mode"),
    [("", "auto"), ("AUTO", "auto"), ("inline", "inline"), ("1", "on"), ("on", "on"), ("0", "off")],
)
def test_compile_mode_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, mode: str
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, raw)
    assert fused.compile_mode() == mode


def test_a_bad_compile_setting_is_refused_when_the_model_loads(
    monkeypatch: pytest.MonkeyPatch, ckpt: Path
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, "sometimes")
    with pytest.raises(UnsupportedDeviceError, match="RERANK_PLUGINS_COMPILE"):
        fused.compile_mode()
    with pytest.raises(UnsupportedDeviceError, match="use auto, inline, 1 or 0"):
        CrossEncoderScorer(ckpt, device="cpu", cache=False)


def test_fusion_is_cpu_only_and_off_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not fused.fusion_enabled(torch.device("cuda", 0))
    big = torch.randn(1, 1, 256, 8)
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    assert not fused.fusion_enabled(CPU)
    assert not oa.eligible(big, big)
    monkeypatch.setenv(fused.COMPILE_ENV, "1")
    assert fused.fusion_enabled(CPU)


@needs_onednn
def test_without_a_compiler_the_steps_stay_eager_and_attention_still_fuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A slim container: no g++/clang++. Inductor cannot compile; oneDNN ships in torch.
    fused._compiler_found.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    try:
        assert not fused.fusion_enabled(CPU)
        big = torch.randn(1, 1, 256, 8)
        assert oa.eligible(big, big)
    finally:
        fused._compiler_found.cache_clear()


# --- the fused steps against their eager definitions -------------------------------------


def _close(a: object, b: object, tol: float) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
        return
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == torch.int8:  # a rounding tie may land one step apart
        assert (a.int() - b.int()).abs().max() <= 1
    else:
        assert (a.float() - b.float()).abs().max() <= tol


@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("with_bias", [False, True])
def test_every_fused_step_equals_its_eager_definition(tokens: int, with_bias: bool) -> None:
    g = torch.Generator().manual_seed(tokens)
    h, inter, heads = 32, 48, 4

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    x, w, b = r(tokens, h), r(h), (r(h) if with_bias else None)
    acc = torch.randint(-5000, 5000, (tokens, 3 * h), generator=g, dtype=torch.int32)
    acc_i = torch.randint(-5000, 5000, (tokens, 2 * inter), generator=g, dtype=torch.int32)
    acc_o = torch.randint(-5000, 5000, (tokens, h), generator=g, dtype=torch.int32)
    scale, bias3 = r(tokens, 1).abs(), (r(3 * h) if with_bias else None)
    cos, sin = r(tokens, h // heads), r(tokens, h // heads)
    cases = [
        (fused.quantize_rows, (x,)),
        (fused.norm_quantize, (x, w, b, 1e-5)),
        (fused.add_norm_quantize, (x, acc_o, scale, r(h).abs(), b, w, b, 1e-5)),
        (fused.add_dequantize, (x, acc_o, scale, r(h).abs(), b)),
        (fused.act_gate, (r(tokens, 2 * inter), F.gelu)),
        (fused.act_gate, (r(tokens, 2 * inter).bfloat16(), activation("gelu_new"))),
        (fused.act_gate_quantize, (acc_i, scale, r(2 * inter).abs() * 1e-3, None, F.silu)),
        (fused.rope_qkv, (r(tokens, 3 * h), cos, sin, heads)),
        (fused.rope_qkv_int8, (acc, scale, r(3 * h).abs(), bias3, cos, sin, heads, torch.float32)),
        (fused.rope_qkv_int8, (acc, scale, r(3 * h).abs(), bias3, cos, sin, heads, torch.bfloat16)),
    ]
    for step, args in cases:
        _close(step(*args), step.eager(*args), 1e-4)


def test_a_step_that_cannot_compile_runs_eagerly_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def needs_host_value(x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        torch._dynamo.graph_break()  # fullgraph refuses to compile across it
        return y - x

    step = fused.FusedStep(needs_host_value)
    x = torch.ones(3)
    with caplog.at_level(logging.WARNING, logger=fused.__name__):
        assert step(x).tolist() == [1.0, 1.0, 1.0]
        assert step(-x).tolist() == [-1.0, -1.0, -1.0]
    ours = [r.message for r in caplog.records if r.name == fused.__name__]
    assert len(ours) == 1 and "running it eagerly" in ours[0]
    monkeypatch.setenv(fused.COMPILE_ENV, "1")  # insisting turns the fallback into an error
    with pytest.raises(UnsupportedDeviceError, match="could not compile needs_host_value"):
        fused.FusedStep(needs_host_value)(x)


# --- oneDNN Graph attention against torch's SDPA -----------------------------------------


def _masks(n: int, length: int) -> dict[str, torch.Tensor | None]:
    i = torch.arange(length)
    lens = torch.tensor([length, max(1, length // 2), 1, length - 1][:n])
    return {
        "none": None,
        "keys": (i.unsqueeze(0) < lens.unsqueeze(1)).view(n, 1, 1, length),
        "band": ((i.unsqueeze(1) - i.unsqueeze(0)).abs() <= 3).view(1, 1, length, length),
    }


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "tokens-major", "one-sequence", "windows"])
def test_onednn_attention_matches_sdpa(
    dtype: torch.dtype, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = oa._get

    def spy(*args: object) -> object:
        calls.append(args[0])
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(oa, "_get", spy)
    g = torch.Generator().manual_seed(1)
    n, heads, length, d = 3, 2, 24, 8
    if layout == "one-sequence":
        n = 1
    base = [torch.randn(n, length, heads, d, generator=g).to(dtype) for _ in range(3)]
    if layout == "contiguous":
        q, k, v = (x.transpose(1, 2).contiguous() for x in base)
    elif layout == "windows":  # overlapping key windows, as blocked local attention
        flat = [x.reshape(n * length, heads, d) for x in base]
        q = flat[0][: 4 * 8].view(4, 8, heads, d).transpose(1, 2)
        k, v = (x.unfold(0, 16, 8).permute(0, 1, 3, 2)[:4] for x in flat[1:])
    else:  # [n, L, H, D] memory viewed as [n, H, L, D]; one sequence: odd size-1 strides
        q, k, v = (x.transpose(1, 2) for x in base)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    masks = _masks(q.shape[0], k.shape[2]) if layout != "windows" else {"none": None}
    for name, mask in masks.items():
        if mask is not None and mask.shape[-2] not in (1, q.shape[2]):
            continue
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        runs = len(calls)
        first = oa.sdpa(q, k, v, mask, 0.3)
        assert len(calls) > runs, name  # the oneDNN path really ran
        assert (first.float() - want.float()).abs().max() <= tol, name
        assert torch.equal(oa.sdpa(q, k, v, mask, 0.3), first), name  # same bits each call


@needs_onednn
def test_long_keys_and_a_failing_trace_stay_on_torch_sdpa(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    long = torch.randn(1, 1, oa.MAX_KEYS + 1, 4)
    assert not oa.eligible(long, long)
    assert torch.equal(
        oa.sdpa(long, long, long, None, 0.5),
        F.scaled_dot_product_attention(long, long, long, scale=0.5),
    )
    small = torch.randn(1, 1, 5, 4)
    assert oa.eligible(small, small)

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("no oneDNN Graph here")

    monkeypatch.setattr(oa.torch.jit, "trace", broken)
    monkeypatch.setitem(oa._state, "failed", False)
    odd = torch.randn(1, 1, 7, 4)  # a signature not traced yet
    with caplog.at_level(logging.WARNING, logger=oa.__name__):
        got = oa.sdpa(odd, odd, odd, None, 0.5)
    assert torch.equal(got, F.scaled_dot_product_attention(odd, odd, odd, scale=0.5))
    assert "using torch's kernel from now on" in caplog.text
    assert not oa.onednn_available()  # and it stays off for this process


# --- the engine: fused against eager, and against transformers ---------------------------


def _logits(directory: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> torch.Tensor:
    monkeypatch.setenv(fused.COMPILE_ENV, mode)
    model = load_modernbert(directory)
    with torch.inference_mode():
        return model.classify(pack_sequences(ids(LENGTHS), CPU))[:, 0]


def test_fused_engine_matches_the_eager_engine_and_transformers(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = _logits(ckpt, monkeypatch, "0")
    fast = _logits(ckpt, monkeypatch, "1")
    assert (fast - eager).abs().max() <= 1e-5
    ref = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(ckpt), attn_implementation="eager", dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        want = torch.stack([ref(input_ids=torch.tensor([s])).logits[0, 0] for s in ids(LENGTHS)])
    assert (fast - want).abs().max() <= 1e-4
    assert fast.argsort().tolist() == want.argsort().tolist()


@has_int8
def test_fused_int8_matches_the_eager_int8_path(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(3)
    docs = [random_text(rng, rng.randint(3, 300)) for _ in range(12)]

    def scores(mode: str) -> list[float]:
        monkeypatch.setenv(fused.COMPILE_ENV, mode)
        scorer = CrossEncoderScorer(ckpt, device="cpu", dtype="int8", cache=False)
        return [s.value for s in scorer.score(QUERY, docs)]

    eager, fast = scores("0"), scores("1")
    # The same quantization; only the summation order of the fused passes differs (a
    # rounding tie may move one int8 step).
    assert max(abs(a - b) for a, b in zip(fast, eager, strict=True)) <= 2e-3
    assert fast != [0.5] * len(fast)


@needs_onednn
def test_long_keys_run_in_query_blocks_and_match_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oa, "_SCORE_BUDGET", 1 << 16)  # forces 32-query blocks
    g = torch.Generator().manual_seed(2)
    n, heads, length, d = 2, 2, oa.SHORT_KEYS + 77, 8
    q, k, v = (torch.randn(n, length, heads, d, generator=g).transpose(1, 2) for _ in range(3))
    keys = (torch.arange(length) < torch.tensor([length, 900]).unsqueeze(1)).view(n, 1, 1, -1)
    assert oa._query_block(heads, oa._round(length, oa._LONG_ROUND), 4) == 32
    for mask in (None, keys):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        got = oa.sdpa(q, k, v, mask, 0.3)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5
        assert torch.equal(oa.sdpa(q, k, v, mask, 0.3), got)


@needs_onednn
def test_long_attention_gives_way_between_query_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batcher's short requests may run between two blocks of a long sequence's global
    # attention (one block is milliseconds; the whole layer, at 8K tokens, a quarter second).
    monkeypatch.setattr(oa, "_SCORE_BUDGET", 1 << 16)  # 32-query blocks
    x = torch.randn(1, 2, oa.SHORT_KEYS + 64, 8)
    calls: list[int] = []
    with preemptible(lambda: calls.append(1)):
        got = oa.sdpa(x, x, x, None, 0.3)
    blocks = oa._round(x.shape[2], 32) // 32
    assert len(calls) == blocks - 1
    assert (got - F.scaled_dot_product_attention(x, x, x, scale=0.3)).abs().max() <= 1e-5
