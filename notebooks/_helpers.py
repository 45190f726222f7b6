"""What the notebooks share, kept out of their cells so that the cells show the API.

- :func:`choose_model`: the real default reranker when the hub is reachable (or the model
  is already cached), else a tiny random-weight checkpoint built on the spot.
- :func:`load_corpus`: the small bundled corpus (``data/corpus.jsonl``).
- :func:`side_by_side`: first-stage order beside reranked order, as a text table.
- :func:`round_robin`: the benchmarks' timer (``rerank_plugins.testing.timing``, which
  ``benchmarks/harness.py`` uses too): interleaved best-of-N with wall and CPU clocks
  and peak memory, for the plots.

This folder needs only the installed package and its own files: a copy of it anywhere runs.
- :func:`start_server`: ``rerank-plugins serve`` in a child process, ready to call.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Progress bars (weights loading, shard writing) would fill the saved outputs; quiet them
# before transformers and tqdm are imported.
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore", message="IProgress not found")

from rerank_plugins import DEFAULT_MODEL  # noqa: E402
from rerank_plugins.testing import make_modernbert_checkpoint  # noqa: E402
from rerank_plugins.testing.first_stage import minilm_path  # noqa: E402

# The notebooks time things the way the benchmark scripts do, with the same code.
from rerank_plugins.testing.timing import round_robin  # noqa: E402

__all__ = [
    "CORPUS",
    "WORKDIR",
    "Model",
    "Server",
    "choose_model",
    "hub_has",
    "load_corpus",
    "round_robin",
    "side_by_side",
    "start_server",
    "tiny_reranker",
]

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "corpus.jsonl"
WORKDIR = Path(tempfile.mkdtemp(prefix="rerank_plugins_notebook_"))
"""Where a notebook builds its small checkpoints (seconds; removed when the kernel exits)."""
atexit.register(shutil.rmtree, WORKDIR, ignore_errors=True)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """A reranker checkpoint for the notebooks: a hub id or a local directory."""

    spec: str
    real: bool
    why: str

    def __str__(self) -> str:
        kind = "real model" if self.real else "TINY RANDOM-WEIGHT checkpoint: scores are noise"
        # A built checkpoint lives in a temporary directory: its path means nothing to a
        # reader of the saved outputs.
        shown = self.spec if self.real else f"<temporary directory>/{Path(self.spec).name}"
        return f"{shown}\n  ({kind}; {self.why})"


def hub_has(model: str, *, timeout: float = 5.0) -> str | None:
    """Why ``model`` can be used from the hub (``None`` when it cannot): cached, or reachable."""
    import huggingface_hub

    try:
        huggingface_hub.snapshot_download(model, local_files_only=True)
        return "found in the Hugging Face cache"
    except Exception:  # not cached (the hub library raises several types)
        pass
    try:
        huggingface_hub.HfApi().model_info(model, timeout=timeout)
    except Exception as exc:  # offline, DNS failure, timeout, HF_HUB_OFFLINE=1, ...
        logger.info("hub not reachable for %s: %s", model, exc)
        return None
    return "the hub is reachable; downloaded on first use (about 600 MB)"


def tiny_reranker(directory: Path | None = None) -> Path:
    """A random-weight ModernBERT cross-encoder in the real layout, with a real tokenizer.

    The tokenizer is all-MiniLM-L6-v2's WordPiece (from the packaged first stage), so token
    counts and truncation are those of real English text; the weights are random, so the
    scores carry no meaning. It builds in about a second.
    """
    directory = directory or WORKDIR / "tiny-reranker"
    make_modernbert_checkpoint(
        directory,
        config={
            "vocab_size": 30522,
            "pad_token_id": 0,
            "cls_token_id": 101,
            "sep_token_id": 102,
            "bos_token_id": 101,
            "eos_token_id": 102,
            "hidden_size": 64,
            "intermediate_size": 96,
            "local_attention": 128,
            "max_position_embeddings": 8192,
        },
    )
    source = Path(minilm_path())
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, directory / name)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 8192
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def choose_model(*, real: bool | None = None, model: str = DEFAULT_MODEL) -> Model:
    """The reranker a notebook uses.

    ``real=None`` (default) takes ``model`` when it is cached or the hub answers, else the
    tiny checkpoint; ``real=True`` insists on ``model``; ``real=False`` always builds the
    tiny one (what the test suite does, to stay fast and offline).
    """
    if real is not False:
        why = hub_has(model)
        if why is not None:
            return Model(model, True, why)
        if real:
            raise RuntimeError(f"{model} is neither cached nor reachable on the hub")
    if real is None:
        why = "the hub is not reachable and the model is not cached"
    else:
        why = "asked for with real=False"
    return Model(str(tiny_reranker()), False, why)


def load_corpus() -> list[dict[str, str]]:
    """The bundled corpus: 28 short passages ``{"id", "text"}`` (space, cities, science)."""
    with CORPUS.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def side_by_side(
    first_stage: Sequence[tuple[str, float]],
    reranked: Sequence[tuple[str, float, bool]],
) -> str:
    """A text table: the first stage's order (id, similarity) beside the reranked order
    (id, relevance score, truncated flag). Documents the reranker dropped show as blanks."""
    rows = [
        f"{'#':>2}  {'first stage (MiniLM cosine)':<32}  {'reranked (relevance_score)':<34}",
        f"{'-' * 2}  {'-' * 32}  {'-' * 34}",
    ]
    for i in range(max(len(first_stage), len(reranked))):
        left = f"{first_stage[i][0]:<24} {first_stage[i][1]:7.3f}" if i < len(first_stage) else ""
        right = ""
        if i < len(reranked):
            doc_id, score, cut = reranked[i]
            right = f"{doc_id:<24} {score:7.3f}{'  (cut)' if cut else ''}"
        rows.append(f"{i + 1:>2}  {left:<32}  {right:<34}".rstrip())
    return "\n".join(rows)


@dataclass
class Server:
    """A ``rerank-plugins serve`` process started by :func:`start_server`."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, *, timeout: float = 30.0) -> int:
        """SIGTERM (the server finishes in-flight requests), then SIGKILL after ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, *args: str, timeout: float = 180.0) -> Server:
    """Run ``rerank-plugins serve --model MODEL ARGS`` on a free loopback port and wait until
    ``GET /health`` answers 200 (the server loads and warms the model before it listens).

    The process is stopped when the kernel exits (or call ``.stop()``); its output goes to
    a log file in :data:`WORKDIR`, shown in the error if it dies before it is ready.
    """
    import httpx

    port = _free_port()
    log = WORKDIR / f"serve-{port}.log"
    command = [sys.executable, "-m", "rerank_plugins", "serve", "--model", model]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    atexit.register(server.stop)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n{log.read_text()}")


@contextmanager
def native_output_to_file(name: str) -> Iterator[Path]:
    """Send what native code writes to file descriptor 2 (Ray's C++ core: its warnings
    about internals) to ``WORKDIR/name`` for the duration, instead of the notebook's
    output. Python's own errors and warnings still show: they do not go through fd 2."""
    path = WORKDIR / name
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield path
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
