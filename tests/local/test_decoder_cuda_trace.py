"""The decoder engine's CUDA path, traced on the CPU (fake CUDA tensors, real shapes and
dtypes): a shared prefix run once, documents continuing it in packed causal batches, and
nothing read back to the host before the final copy of the two answer logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rerank_plugins.local.checkpoint import load_state_dict, read_json
from rerank_plugins.local.engine.qwen import build_qwen
from rerank_plugins.testing import make_mxbai_v2_checkpoint, make_qwen3_reranker_checkpoint
from rerank_plugins.testing.fake_device import fake_device
from tests.local.test_cuda_trace import VARLEN, assert_fp32_rope, count, traced

pytestmark = pytest.mark.cuda_trace

LENGTHS = (7, 40, 131, 300, 12)
PREFIX = list(range(5, 60))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trace")
    return {
        "qwen3": make_qwen3_reranker_checkpoint(root / "qwen3"),
        "qwen2": make_mxbai_v2_checkpoint(root / "qwen2"),
    }


def sequences() -> list[list[int]]:
    return [[(i * 7 + j) % 200 + 5 for j in range(n)] for i, n in enumerate(LENGTHS)]


@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
@pytest.mark.parametrize(("backend", "varlen_calls"), [("auto", 2 * 2), ("sdpa", 0)])
def test_decoder_with_a_shared_prefix_runs_on_cuda_in_bf16_without_host_sync(
    ckpts: dict[str, Path], family: str, backend: str, varlen_calls: int
) -> None:
    d = ckpts[family]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    with fake_device("cuda") as fake:
        dev = fake.device
        model = build_qwen(
            cfg,
            fake.state(state),
            answer_tokens=(3, 4),
            device=dev,
            dtype=torch.bfloat16,
            backend=backend,
        )
        assert {(p.device, p.dtype) for p in model.trunk.parameters()} == {(dev, torch.bfloat16)}
        assert (model.head.device, model.head.dtype, tuple(model.head.shape)) == (
            dev,
            torch.float32,
            (2, 64),
        )

        def run() -> torch.Tensor:
            past = model.context(PREFIX)
            return model.answer_logits(sequences(), past=past, context=len(PREFIX)).cpu()

        logits, rec = traced(fake, run, copies=1)
    assert (logits.shape, logits.dtype, logits.device.type) == ((5, 2), torch.float32, "cpu")
    # Two layers, each run once for the prefix and once for the documents.
    assert count(rec, VARLEN) == varlen_calls
    if backend == "sdpa":
        assert sum("scaled_dot_product" in e.name and e.on_device for e in rec.events) >= 4
    names = {"aten.linear", "aten.addmm", "aten.mm", "aten.matmul", "aten.bmm"}
    matmuls = [e.dtypes[0] for e in rec.events if e.on_device and e.name in names]
    # 2 layers x 7 projections x 2 passes in bf16; the two-row head once, in fp32.
    assert matmuls.count(torch.bfloat16) == 28 and matmuls.count(torch.float32) == 1
    assert_fp32_rope(rec)


def test_decoder_without_prefix_traces_too(ckpts: dict[str, Path]) -> None:
    d = ckpts["qwen3"]
    state, cfg = load_state_dict(d), read_json(d / "config.json")
    with fake_device("cuda") as fake:
        model = build_qwen(
            cfg, fake.state(state), answer_tokens=(3, 4), device=fake.device, dtype=torch.bfloat16
        )
        logits, rec = traced(fake, lambda: model.answer_logits(sequences()).cpu(), copies=1)
    assert logits.shape == (5, 2) and count(rec, VARLEN) == 2
