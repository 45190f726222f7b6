"""Every CUDA code path, traced on the CPU: fake CUDA tensors, real shapes and dtypes.

Each scorer family is built from its real (tiny) checkpoint's state dict on a fake
``cuda:0`` (:func:`rerank_plugins.testing.fake_device`) and runs its forward on packed
batches of several sequences, longer than the local window. Checked: output shapes, dtypes
and devices; bf16 trunk matmuls with fp32 RoPE tables, pooling and heads; which attention
kernel ran and how often (so an early exit really skips layers); and that nothing reads
device data on the host before the result's final copy to the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank_plugins.local.checkpoint import load_state_dict, read_json
from rerank_plugins.local.colbert import ColBERTEncoder, build_dense
from rerank_plugins.local.engine.attention import (
    AttentionFeatures,
    Backends,
    choose_backend,
    choose_backends,
)
from rerank_plugins.local.engine.device import pick_device, pick_dtype
from rerank_plugins.local.engine.gte import GteNewPairClassifier, build_gte_new
from rerank_plugins.local.engine.modernbert import ModernBertPairClassifier, build_modernbert
from rerank_plugins.local.fill_mask import top_predictions
from rerank_plugins.local.matryoshka import (
    CONFIG_FILE,
    HEADS_FILE,
    MatryoshkaConfig,
    MatryoshkaPairClassifier,
    load_heads,
)
from rerank_plugins.local.tokenization import EncodedPair
from rerank_plugins.testing import (
    make_colbert_checkpoint,
    make_gte_new_checkpoint,
    make_matryoshka_checkpoint,
    make_modernbert_checkpoint,
)
from rerank_plugins.testing.fake_device import (
    FakeDevice,
    HostSyncError,
    SyncRecorder,
    fake_device,
)

pytestmark = pytest.mark.cuda_trace

VARLEN = "torch_attn._varlen_attn"
FLEX = "higher_order.flex_attention"
# A torch whose varlen_attn takes no window (2.10): varlen on global layers only.
NO_WINDOW = AttentionFeatures(varlen=True, varlen_window=False, flex=True, capability=(9, 0))
# A Pascal GPU (no Triton, no flash attention): length-bucketed SDPA.
OLD_GPU = AttentionFeatures(varlen=True, varlen_window=True, flex=True, capability=(6, 1))
# Lengths: several sequences per batch, all longer than the tiny models' +-4 local window,
# one over FlexAttention's 128-token block.
LENGTHS = (7, 40, 131, 300, 12)


@pytest.fixture(autouse=True)
def _quiet_uncompiled_flex() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flex runs eagerly under the trace
        yield


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trace")
    return {
        "seq-cls": make_modernbert_checkpoint(root / "seqcls"),
        "mlm": make_modernbert_checkpoint(root / "mlm", head="mlm"),
        "gte": make_gte_new_checkpoint(root / "gte"),
        "mmbert": make_matryoshka_checkpoint(root / "mmbert"),
        "colbert": make_colbert_checkpoint(root / "colbert"),
    }


def pairs(lengths: tuple[int, ...] = LENGTHS, vocab: int = 300) -> list[EncodedPair]:
    return [
        EncodedPair([(i * 7 + j) % (vocab - 5) + 5 for j in range(n)], [0] * n, False)
        for i, n in enumerate(lengths)
    ]


def traced(fake: FakeDevice, run: Callable[[], Any], *, copies: int) -> tuple[Any, SyncRecorder]:
    """Run ``run`` under the host-sync recorder; exactly ``copies`` device-to-host copies,
    all after the last device computation."""
    with fake.no_host_sync() as rec:
        out = run()
    rec.check_final_copies(expected=copies)
    return out, rec


def count(rec: SyncRecorder, name: str) -> int:
    return sum(e.name == name for e in rec.events)


def device_matmul_dtypes(rec: SyncRecorder) -> list[torch.dtype]:
    names = {"aten.linear", "aten.addmm", "aten.mm", "aten.matmul", "aten.bmm"}
    return [e.dtypes[0] for e in rec.events if e.on_device and e.name in names]


def assert_fp32_rope(rec: SyncRecorder) -> None:
    tables = [e.dtypes[0] for e in rec.events if e.on_device and e.name in ("aten.cos", "aten.sin")]
    assert tables and all(d == torch.float32 for d in tables)


# --- ModernBERT sequence classification ---------------------------------------------


@pytest.mark.parametrize(
    ("features", "expected", "kernels"),
    [
        (None, Backends("varlen", "varlen"), {VARLEN: 4}),
        (NO_WINDOW, Backends("varlen", "flex"), {VARLEN: 2, FLEX: 2}),
        ("flex", Backends("flex", "flex"), {FLEX: 4}),
        (OLD_GPU, Backends("sdpa", "sdpa"), {VARLEN: 0, FLEX: 0}),
    ],
    ids=["varlen-windows", "varlen-global-flex-local", "flex", "bucketed-sdpa"],
)
def test_modernbert_seq_cls_runs_on_cuda_in_bf16_without_host_sync(
    ckpts: dict[str, Path], features: Any, expected: Backends, kernels: dict[str, int]
) -> None:
    d = ckpts["seq-cls"]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    with fake_device("cuda") as fake:
        dev = fake.device
        if features == "flex":
            backend: Any = choose_backends(dev, "flex", dtype=torch.bfloat16)
        elif features is None:
            backend = "auto"  # detected: this torch's varlen_attn takes windows
        else:
            backend = choose_backends(dev, dtype=torch.bfloat16, features=features)
        model = build_modernbert(
            cfg, fake.state(state), device=dev, dtype=torch.bfloat16, backend=backend
        )
        assert model.trunk.backends == expected
        assert {(p.device, p.dtype) for p in model.trunk.parameters()} == {(dev, torch.bfloat16)}
        assert model.head is not None and model.classifier is not None
        assert {p.dtype for p in model.head.parameters()} == {torch.float32}
        pooled: list[torch.Tensor] = []
        model.head.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
        classifier = ModernBertPairClassifier(model, device=dev)
        logits, rec = traced(fake, lambda: classifier.logits(pairs()), copies=1)
    assert (logits.shape, logits.dtype, logits.device.type) == ((5, 1), torch.float32, "cpu")
    assert {k: count(rec, k) for k in kernels} == kernels
    sdpa = sum("scaled_dot_product" in e.name and e.on_device for e in rec.events)
    assert (sdpa >= 4) == (expected.full == "sdpa")  # buckets on global, blocks on local layers
    assert pooled[0].dtype == torch.float32 and pooled[0].shape == (5, 32)  # mean pool, fp32
    matmuls = device_matmul_dtypes(rec)
    # The trunk's 4 layers x 4 matmuls in bf16; only head.dense and the classifier in fp32.
    assert matmuls.count(torch.bfloat16) == 16 and matmuls.count(torch.float32) == 2
    assert_fp32_rope(rec)


def test_modernbert_on_a_pre_ampere_gpu_runs_flex(ckpts: dict[str, Path]) -> None:
    d = ckpts["seq-cls"]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    with fake_device("cuda", capability=(7, 5)) as fake:  # a T4: no flash attention
        model = build_modernbert(cfg, fake.state(state), device=fake.device, dtype=torch.bfloat16)
        assert model.trunk.backends == Backends("flex", "flex")
        classifier = ModernBertPairClassifier(model, device=fake.device)
        logits, rec = traced(fake, lambda: classifier.logits(pairs()), copies=1)
    assert logits.shape == (5, 1) and count(rec, FLEX) == 4 and count(rec, VARLEN) == 0


# --- GTE "new" ---------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["auto", "flex"])
def test_gte_new_runs_on_cuda_without_host_sync(ckpts: dict[str, Path], requested: str) -> None:
    d = ckpts["gte"]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    with fake_device("cuda") as fake:
        dev = fake.device
        model = build_gte_new(cfg, fake.state(state), device=dev, dtype=torch.bfloat16)
        assert model.new.encoder.layer[0].attention.qkv_proj.weight.dtype == torch.bfloat16
        assert model.classifier.weight.dtype == torch.float32
        assert (model.inv_freq.dtype, model.inv_freq.device) == (torch.float32, dev)
        backend = choose_backend(dev, requested, dtype=torch.bfloat16)
        classifier = GteNewPairClassifier(model, device=dev, backend=backend)
        logits, rec = traced(fake, lambda: classifier.logits(pairs()), copies=1)
    assert (logits.shape, logits.dtype, logits.device.type) == ((5, 1), torch.float32, "cpu")
    kernel = VARLEN if requested == "auto" else FLEX
    assert count(rec, kernel) == 3  # every GTE layer is global
    matmuls = device_matmul_dtypes(rec)
    assert matmuls.count(torch.float32) == 2  # pooler.dense and classifier
    assert matmuls.count(torch.bfloat16) == 3 * 4
    assert_fp32_rope(rec)


# --- mmBERT 2D-Matryoshka early exit ------------------------------------------------


def test_matryoshka_exits_run_only_their_layers_on_cuda(ckpts: dict[str, Path]) -> None:
    d = ckpts["mmbert"]
    state, cfg, heads = load_state_dict(d), read_json(d / "config.json"), load_heads(d / HEADS_FILE)
    layers = int(cfg["num_hidden_layers"])
    grid = MatryoshkaConfig.from_json(
        read_json(d / CONFIG_FILE), num_layers=layers, hidden_size=int(cfg["hidden_size"])
    )
    assert len(grid.layer_indices) >= 3
    with fake_device("cuda") as fake:
        dev = fake.device
        model = build_modernbert(cfg, fake.state(state), device=dev, dtype=torch.bfloat16)
        fake_heads = fake.state(heads)
        for layer in grid.layer_indices:
            dim = grid.dim_indices[-1] if layer < layers else grid.dim_indices[0]
            clf = MatryoshkaPairClassifier(
                model, grid, fake_heads, device=dev, layer=layer, dim=dim
            )
            assert clf.head.layers[0].weight.dtype == torch.float32
            logits, rec = traced(fake, lambda c=clf: c.logits(pairs(vocab=305)), copies=1)
            assert (logits.shape, logits.dtype, logits.device.type) == (
                (5, 1),
                torch.float32,
                "cpu",
            )
            assert count(rec, VARLEN) == layer  # the layers past the exit never run
            assert_fp32_rope(rec)


# --- ColBERT query and document encoding --------------------------------------------


def colbert_encoder(fake: FakeDevice, d: Path, state: Any, dense: Any) -> ColBERTEncoder:
    cfg = read_json(d / "config.json")
    trunk = build_modernbert(cfg, fake.state(state), device=fake.device, dtype=torch.bfloat16).trunk
    projection = torch.nn.Sequential(
        build_dense(read_json(d / "1_Dense" / "config.json"), fake.state(dense), device=fake.device)
    )
    return ColBERTEncoder(trunk, projection, skiplist_ids=frozenset({5, 9}), device=fake.device)


def test_colbert_encoding_stays_on_cuda(ckpts: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    d = ckpts["colbert"]
    state, dense = load_state_dict(d), load_file(str(d / "1_Dense" / "model.safetensors"))
    docs = [p.ids for p in pairs()]
    kept = [sum(t not in (5, 9) for t in ids) for ids in docs]
    assert kept != [len(ids) for ids in docs]  # the skiplist removes some tokens
    with fake_device("cuda") as fake:
        encoder = colbert_encoder(fake, d, state, dense)
        vectors, rec = traced(fake, lambda: encoder.documents(docs, batch_tokens=256), copies=0)
        assert [tuple(v.shape) for v in vectors] == [(n, 128) for n in kept]
        assert {(v.device, v.dtype) for v in vectors} == {(fake.device, torch.float32)}
        # 490 tokens in 256-token batches: the 300-token one alone, then the rest together.
        assert count(rec, VARLEN) == 4 * 2
        query = list(range(10, 22))
        q, rec = traced(fake, lambda: encoder.query(query), copies=0)
        assert (q.shape, q.device, q.dtype) == ((12, 128), fake.device, torch.float32)
        # Query expansion without attending to it: the dense-mask path, still no sync.
        q, rec = traced(fake, lambda: encoder.query(query, keys=8), copies=0)
        assert (q.shape, q.device) == ((12, 128), fake.device)


# --- fill-mask ---------------------------------------------------------------------


def test_fill_mask_reads_back_only_its_results(ckpts: dict[str, Path]) -> None:
    d = ckpts["mlm"]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    mask = 4
    ids = [[2, 10, mask, 11, 3], [2] + [20] * 50 + [mask, mask] + [21] * 30 + [3]]
    with fake_device("cuda") as fake:
        model = build_modernbert(cfg, fake.state(state), device=fake.device, dtype=torch.bfloat16)
        assert model.decoder is not None and model.decoder.weight.dtype == torch.float32
        (values, indices, owners), _ = traced(
            fake,
            lambda: top_predictions(model, ids, mask_id=mask, top_k=3, device=fake.device),
            copies=2,
        )
    assert owners == [0, 1, 1]
    assert (values.shape, values.dtype, values.device.type) == ((3, 3), torch.float32, "cpu")
    assert (indices.shape, indices.dtype) == ((3, 3), torch.int64)


# --- the device and dtype defaults, and the detector itself --------------------------


def test_auto_device_is_indexed_cuda_and_bf16() -> None:
    with fake_device("cuda"):
        device = pick_device("auto")
        assert device == torch.device("cuda", 0)
        assert pick_device("cuda") == torch.device("cuda", 0)
        assert pick_dtype("auto", device) == torch.bfloat16


@pytest.mark.parametrize(
    "sync",
    [
        lambda x: x.sum().item(),
        lambda x: x.tolist(),
        lambda x: bool(x.sum() > 0),  # data-dependent Python branching
        # (x.nonzero() and x[mask] already fail earlier on fake CUDA, in their bindings)
        lambda x: torch.ops.aten.nonzero.default(x),
        lambda x: torch.repeat_interleave(x.long()),
    ],
    ids=["item", "tolist", "branch", "nonzero", "repeat_interleave"],
)
def test_the_detector_catches_each_kind_of_host_sync(sync: Callable[[torch.Tensor], Any]) -> None:
    with fake_device("cuda") as fake:
        x = torch.ones(8, device=fake.device)
        with pytest.raises(HostSyncError), fake.no_host_sync():
            sync(x)


def test_the_detector_rejects_a_copy_to_the_host_before_the_work_is_done() -> None:
    with fake_device("cuda") as fake:
        x = torch.ones(8, 8, device=fake.device)
        with fake.no_host_sync() as rec:
            early = x.sum(0).cpu()  # e.g. lengths read back to plan the next kernel
            (x @ x).float().cpu()
        with pytest.raises(HostSyncError, match="before the device work was over"):
            rec.check_final_copies()
    assert early.device.type == "cpu"


def test_the_fake_device_serves_mps_too() -> None:
    # The same seam for Apple GPUs (CI has none either): availability patched, fake tensors.
    with fake_device("mps") as fake:
        assert torch.backends.mps.is_available() and fake.device == torch.device("mps", 0)
        x = torch.ones(4, 8, device=fake.device)
        out, _ = traced(fake, lambda: (x @ x.T).float().cpu(), copies=1)
    assert (out.shape, out.device.type) == ((4, 4), "cpu")
    with pytest.raises(ValueError, match="no fake"):
        with fake_device("xpu"):
            pass
