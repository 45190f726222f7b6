"""The Apple MPS code path, traced on the CPU: fake ``mps`` tensors, real shapes and dtypes.

No Mac runs CI, so the ModernBERT sequence-classification forward is built from a tiny
real checkpoint's state dict on a fake ``mps:0`` (:func:`rerank_plugins.testing.fake_device`)
and run on packed batches longer than the local window. Checked: ``device="auto"`` picks
MPS, the SDPA backend on every layer, fp32 (default) and fp16 (opt-in) trunk matmuls with
fp32 RoPE tables, pooling and heads, and no device read-back before the final copy.

What the trace cannot show: torch's fused-kernel choice has no MPS entry on a CPU build, so
attention runs torch's generic math path here (see ``_SdpaMathOnMps``), not a Metal kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rerank_plugins.local.checkpoint import load_state_dict, read_json
from rerank_plugins.local.engine.attention import Backends, choose_backends
from rerank_plugins.local.engine.device import pick_device, pick_dtype
from rerank_plugins.local.engine.modernbert import ModernBertPairClassifier, build_modernbert
from rerank_plugins.local.tokenization import EncodedPair
from rerank_plugins.testing import make_modernbert_checkpoint
from rerank_plugins.testing.fake_device import fake_device

pytestmark = pytest.mark.mps_trace

# Several sequences per batch, all longer than the tiny model's +-4 local window.
LENGTHS = (7, 40, 131, 300, 12)
MATMULS = {"aten.linear", "aten.addmm", "aten.mm", "aten.matmul", "aten.bmm"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modernbert_checkpoint(tmp_path_factory.mktemp("mps") / "seqcls")


def pairs(vocab: int = 300) -> list[EncodedPair]:
    return [
        EncodedPair([(i * 7 + j) % (vocab - 5) + 5 for j in range(n)], [0] * n, False)
        for i, n in enumerate(LENGTHS)
    ]


def test_auto_device_on_a_mac_is_mps_with_fp32_and_sdpa() -> None:
    with fake_device("mps"):
        dev = pick_device("auto")
        assert dev.type == "mps"
        assert pick_dtype("auto", dev) == torch.float32
        assert choose_backends(dev, dtype=torch.float32) == Backends("sdpa", "sdpa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_modernbert_seq_cls_runs_on_mps_with_sdpa_without_host_sync(
    ckpt: Path, dtype: torch.dtype
) -> None:
    state, cfg = load_state_dict(ckpt), read_json(ckpt / "config.json")
    with fake_device("mps") as fake:
        dev = fake.device
        model = build_modernbert(cfg, fake.state(state), device=dev, dtype=dtype, backend="auto")
        assert model.trunk.backends == Backends("sdpa", "sdpa")
        assert {(p.device, p.dtype) for p in model.trunk.parameters()} == {(dev, dtype)}
        assert model.head is not None and model.classifier is not None
        assert {p.dtype for p in model.head.parameters()} == {torch.float32}
        pooled: list[torch.Tensor] = []
        model.head.register_forward_pre_hook(lambda _m, args: pooled.append(args[0]))
        classifier = ModernBertPairClassifier(model, device=dev)
        with fake.no_host_sync() as rec:
            logits = classifier.logits(pairs())
        rec.check_final_copies(expected=1)
    assert (logits.shape, logits.dtype, logits.device.type) == ((5, 1), torch.float32, "cpu")
    sdpa = sum(e.name == "aten.scaled_dot_product_attention" and e.on_device for e in rec.events)
    # 2 global layers: one call per sequence (5, no padding); 2 local layers: one blocked call.
    assert sdpa == 2 * len(LENGTHS) + 2
    matmuls = [e.dtypes[0] for e in rec.events if e.on_device and e.name in MATMULS]
    # The trunk's 4 layers x 4 matmuls in the trunk dtype; head.dense and classifier in fp32.
    if dtype == torch.float32:
        assert matmuls.count(torch.float32) == 18
    else:
        assert matmuls.count(dtype) == 16 and matmuls.count(torch.float32) == 2
    tables = [e.dtypes[0] for e in rec.events if e.on_device and e.name in ("aten.cos", "aten.sin")]
    assert tables and all(d == torch.float32 for d in tables)
    assert pooled[0].dtype == torch.float32 and pooled[0].shape == (5, 32)  # mean pool, fp32
