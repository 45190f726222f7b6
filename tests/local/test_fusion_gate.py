"""When a trunk starts taking the CPU fast path (``RERANK_PLUGINS_COMPILE=auto``).

By default large forwards run eagerly until they have done about as much work as compiling
costs, then a background thread compiles every fused step, and forwards fuse once that is
done; ``finish_compiling``
(a server's warm-up) compiles now and waits. Checked: which thread runs the fused layers,
that the scores are the eager engine's until then (within 1e-5: attention may run
through oneDNN either way) and after, that a failed
compilation leaves the forwards eager and correct, and that ``inline`` compiles at once.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from rerank_plugins.local.engine import fused
from rerank_plugins.local.engine import modernbert as mb
from rerank_plugins.local.engine import modernbert_fused as mf
from rerank_plugins.local.engine import onednn_attention as oa
from rerank_plugins.local.engine.modernbert import load_modernbert
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.testing import make_modernbert_checkpoint

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
LAYERS, HIDDEN = 3, 64
CONFIG = {
    "num_hidden_layers": LAYERS,
    "hidden_size": HIDDEN,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "global_attn_every_n_layers": 2,
    "local_attention": 16,
    "classifier_pooling": "mean",
    "initializer_range": 0.05,
}
LENGTHS = [40, 3, 300, 90]
needs_compiler = pytest.mark.skipif(
    not fused._compiler_found(), reason="no C++ compiler: the steps cannot compile"
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_modernbert_checkpoint(tmp_path_factory.mktemp("gate") / "m", config=CONFIG)


@pytest.fixture()
def fused_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that ran a fused layer, in order (the floors at zero, so
    that the tiny model's forwards count as large)."""
    monkeypatch.setattr(fused, "FUSE_MIN_ELEMENTS", 0)
    monkeypatch.setattr(oa, "MIN_KEYS", 1)
    seen: list[str] = []
    real = mb.fused_layer

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(mb, "fused_layer", recording)
    return seen


def _logits(model: mb.ModernBert) -> torch.Tensor:
    rng = random.Random(0)
    ids = [[2] + [rng.randint(5, 304) for _ in range(n)] + [3] for n in LENGTHS]
    with torch.inference_mode():
        return model.classify(pack_sequences(ids, CPU))[:, 0]


@needs_compiler
def test_auto_compiles_in_the_background_once_the_eager_work_adds_up(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, fused_threads: list[str]
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    eager = _logits(load_modernbert(ckpt))
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    work = sum(n + 2 for n in LENGTHS) * HIDDEN * LAYERS  # one forward's
    monkeypatch.setattr(mf, "BACKGROUND_AFTER_WORK", work + work // 2)  # 1.5 forwards
    model = load_modernbert(ckpt)
    gate = model.trunk.fusion

    first = _logits(model)
    assert fused_threads == [] and gate._thread is None  # a short job compiles nothing
    assert (first - eager).abs().max() <= 1e-5  # attention may still run through oneDNN

    second = _logits(model)  # crosses the threshold: starts compiling, runs eagerly itself
    assert gate._thread is not None
    assert (second - eager).abs().max() <= 1e-5
    assert gate.finish(timeout=600)
    assert set(fused_threads) == {"rerank-compile"}  # only the synthetic forward so far

    fused_threads.clear()
    third = _logits(model)
    assert fused_threads == [threading.current_thread().name] * LAYERS
    assert (third - eager).abs().max() <= 1e-5


@needs_compiler
def test_finish_compiling_compiles_every_loaded_trunk_now(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, fused_threads: list[str], caplog: Any
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")
    model = load_modernbert(ckpt)
    assert not model.trunk.fusion.ready
    with caplog.at_level(logging.INFO, logger=mf.__name__):
        assert mf.finish_compiling(timeout=600)
    assert model.trunk.fusion.ready
    assert "CPU fast path compiled in" in caplog.text
    fused_threads.clear()
    _logits(model)  # the very first forward already fuses
    assert fused_threads and set(fused_threads) == {threading.current_thread().name}


def test_a_failed_compilation_leaves_the_forwards_eager_and_correct(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, fused_threads: list[str], caplog: Any
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    eager = _logits(load_modernbert(ckpt))
    monkeypatch.setenv(fused.COMPILE_ENV, "auto")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no space left on device")

    monkeypatch.setattr(mf, "pack_sequences", broken)
    model = load_modernbert(ckpt)
    with caplog.at_level(logging.WARNING, logger=mf.__name__):
        assert not model.trunk.fusion.finish(timeout=60)
    assert "compiling the CPU fast path failed (RuntimeError: no space left" in caplog.text
    assert not model.trunk.fusion.ready
    for _ in range(3):  # never fused, never started again, the eager scores
        assert (_logits(model) - eager).abs().max() <= 1e-5
    assert fused_threads == []


def test_inline_and_on_fuse_from_the_first_large_forward(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, fused_threads: list[str]
) -> None:
    for mode in ("inline", "1"):
        monkeypatch.setenv(fused.COMPILE_ENV, mode)
        fused_threads.clear()
        model = load_modernbert(ckpt)
        _logits(model)
        assert model.trunk.fusion._thread is None
        assert fused_threads == [threading.current_thread().name] * LAYERS


def test_off_never_compiles(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch, fused_threads: list[str]
) -> None:
    monkeypatch.setenv(fused.COMPILE_ENV, "0")
    model = load_modernbert(ckpt)
    for _ in range(3):
        _logits(model)
    assert mf.finish_compiling()  # nothing to do
    assert model.trunk.fusion._thread is None and fused_threads == []


def test_the_synthetic_forward_is_just_over_the_floor() -> None:
    assert mf.warm_tokens(768) * 768 >= fused.FUSE_MIN_ELEMENTS
    assert (mf.warm_tokens(768) - 1) * 768 < fused.FUSE_MIN_ELEMENTS
    assert mf.warm_tokens(1 << 20) == 32  # torch._int_mm needs more than 16 rows


@needs_compiler
@pytest.mark.slow  # a fresh interpreter that compiles (seconds)
def test_a_process_that_exits_while_compiling_waits_for_it(ckpt: Path) -> None:
    # A compilation thread still inside the compiler when the interpreter tears down
    # aborted the process once in nine tries ("terminate called without an active
    # exception", status 134): the exit now waits for it.
    script = (
        "import logging, sys, torch\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from rerank_plugins.local.engine import fused, modernbert_fused as mf\n"
        "from rerank_plugins.local.engine.modernbert import load_modernbert\n"
        "from rerank_plugins.local.engine.packing import pack_sequences\n"
        "fused.FUSE_MIN_ELEMENTS = 0\n"
        "mf.BACKGROUND_AFTER_WORK = 1  # the first forward starts the compilation\n"
        "model = load_modernbert(sys.argv[1])\n"
        "with torch.inference_mode():\n"
        "    for _ in range(2):\n"
        "        model.classify(pack_sequences([[2, 7, 9, 3]] * 3, torch.device('cpu')))\n"
        "gate = model.trunk.fusion\n"
        "print('compiling', gate._thread is not None and not gate.ready, flush=True)\n"
    )
    env = {**os.environ, fused.COMPILE_ENV: "auto", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(ckpt)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiling True" in done.stdout  # it did exit while compiling
    assert "waiting for the CPU fast path's compilation to finish" in done.stderr
    assert "CPU fast path compiled in" in done.stderr  # and the compilation completed
    assert "terminate called" not in done.stderr
