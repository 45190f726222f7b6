"""Every ```python example of the docs runs, against tiny local checkpoints in place of the
hub models, unless a table below says why it cannot run here.

Examples are read from README.md and docs/**/*.md (when docs exist). Each is known by its
first line: a new example must be added to ``RUNS`` or ``SKIPPED`` (the test listing the
unclassified ones fails), so none goes unchecked by accident. Hub ids in a runnable
example must be in ``MODELS``: the checkpoint that stands in for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins.testing import (
    FunctionScorer,
    make_colbert_checkpoint,
    make_gte_new_checkpoint,
    make_matryoshka_checkpoint,
    make_modernbert_checkpoint,
    make_qwen3_reranker_checkpoint,
)

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
HUB_ID = re.compile(r"[\"']([A-Za-z0-9][\w.-]*/[\w.-]+)[\"']")


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md, then the docs site's pages (docs/**/*.md) if there is one."""
    return [root / "README.md", *sorted((root / "docs").glob("**/*.md"))]


@dataclass(frozen=True)
class Example:
    path: Path
    line: int
    code: str

    @property
    def key(self) -> str:
        return self.code.strip().splitlines()[0].strip()

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def examples(paths: list[Path]) -> list[Example]:
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            found.append(Example(path, line, match.group(1)))
    return found


# The example's first line -> why it cannot run here (no network, no server in this test).
SKIPPED: dict[str, str] = {
    "import cohere                                    # the official SDK, v1 or v2": (
        "talks to a running `rerank-plugins serve` (covered by tests/serve/test_server.py)"
    ),
    "import ray": "starts a Ray cluster (covered by tests/test_ray.py)",
    "from ray import serve": "deploys on Ray Serve (covered by tests/test_ray.py)",
}
# The example's first line -> what it needs from CONTEXT beyond its own imports.
RUNS: dict[str, tuple[str, ...]] = {
    "from langchain_classic.retrievers import ContextualCompressionRetriever": ("my_retriever",),
    "from langchain_classic.retrievers.document_compressors import CrossEncoderReranker": (),
    "from rerank_plugins.llama_index import RerankPostprocessor": ("index",),
    "from rerank_plugins import rerank": (),
    "from rerank_plugins import load_scorer, rank": (),
    "from rerank_plugins import FillMask": (),
    # Continuations of the section's earlier examples: load_scorer, RerankCompressor.
    'scorer = load_scorer("llm-semantic-router/mmbert-rerank-32k-2d-matryoshka", '
    "layer=6, dim=256)": ("load_scorer", "RerankCompressor"),
    'scorer = load_scorer("lightonai/GTE-ModernColBERT-v1")          # ColBERTScorer': (
        "load_scorer",
        "documents",
    ),
    'scorer = load_scorer("Alibaba-NLP/gte-multilingual-reranker-base")': ("load_scorer",),
    'scorer = load_scorer("Qwen/Qwen3-Reranker-0.6B", instruction="Given a question, find '
    'the passage that answers it")': ("load_scorer",),
    # Builds remote scorers only: nothing is sent until score() is called.
    "from rerank_plugins import load_scorer": (),
    'scorer = load_scorer("http://127.0.0.1:8080", dialect="tei")   '
    "# vLLM, TEI, Infinity, Cohere, Voyage, NIM, ...": ("load_scorer",),
    "from rerank_plugins import InputTooLongError, InvalidInputError, RerankError, ScoringError": (
        "scorer",
        "query",
        "documents",
    ),
    "import llama_index.core.instrumentation as instrument": (),
    "from rerank_plugins import InputTooLongError, load_scorer": ("query", "documents"),
    'scorer = load_scorer("Alibaba-NLP/gte-reranker-modernbert-base", overflow="chunk", '
    'aggregate="max")': ("load_scorer", "query", "documents"),
    "scorer = load_scorer(": ("load_scorer",),
    "from rerank_plugins import Cascade, load_scorer": (),
    # A FastAPI app with a batching reranker (CHECKS calls its handler too).
    "from fastapi import FastAPI": (),
    # docs/evaluate.md: evaluate() on the packaged collection (tiny checkpoint, depth 5).
    "import tempfile": (),
}


def build_models(tmp: Path) -> dict[str, Callable[[], Path]]:
    """Hub id -> a builder of the tiny checkpoint of the same family standing in for it."""
    return {
        "Alibaba-NLP/gte-reranker-modernbert-base": lambda: make_modernbert_checkpoint(
            tmp / "cross"
        ),
        "answerdotai/ModernBERT-base": lambda: make_modernbert_checkpoint(tmp / "mlm", head="mlm"),
        # The README picks exit layer 6 and head width 256: the tiny model has those exits.
        "llm-semantic-router/mmbert-rerank-32k-2d-matryoshka": lambda: make_matryoshka_checkpoint(
            tmp / "mm",
            config={"hidden_size": 256},
            matryoshka={"layer_indices": [2, 6, 8], "dim_indices": [256, 64]},
        ),
        "lightonai/GTE-ModernColBERT-v1": lambda: make_colbert_checkpoint(tmp / "colbert"),
        "Alibaba-NLP/gte-multilingual-reranker-base": lambda: make_gte_new_checkpoint(tmp / "gte"),
        "Qwen/Qwen3-Reranker-0.6B": lambda: make_qwen3_reranker_checkpoint(tmp / "qwen3"),
    }


DOCUMENTS = ["Jupiter is the largest planet.", "Paris is in France.", "Mars is red."]


def context_builders() -> dict[str, Callable[[], Any]]:
    """What the examples assume the reader already has, built only when one needs it."""

    def my_retriever() -> Any:
        from langchain_core.documents import Document
        from langchain_core.retrievers import BaseRetriever

        class Fixed(BaseRetriever):
            def _get_relevant_documents(self, query: str, **_: Any) -> list[Document]:
                return [Document(page_content=d) for d in DOCUMENTS]

        return Fixed()

    def index() -> Any:
        from llama_index.core import Document, VectorStoreIndex
        from llama_index.core.embeddings import MockEmbedding

        return VectorStoreIndex.from_documents(
            [Document(text=d) for d in DOCUMENTS], embed_model=MockEmbedding(embed_dim=8)
        )

    def load_scorer() -> Any:
        from rerank_plugins import load_scorer

        return load_scorer

    def rerank_compressor() -> Any:
        from rerank_plugins.langchain import RerankCompressor

        return RerankCompressor

    return {
        "my_retriever": my_retriever,
        "index": index,
        "documents": lambda: list(DOCUMENTS),
        "query": lambda: "Which planet is the largest?",
        "scorer": lambda: FunctionScorer(lambda q, d: float(len(set(q.split()) & set(d.split())))),
        "load_scorer": load_scorer,
        "RerankCompressor": rerank_compressor,
    }


ALL = examples(markdown_files())


def test_the_docs_have_examples_and_every_one_is_classified() -> None:
    assert ALL, "no ```python blocks found"
    unclassified = [f"{e}: {e.key!r}" for e in ALL if e.key not in RUNS and e.key not in SKIPPED]
    assert not unclassified, "classify these examples in RUNS or SKIPPED:\n" + "\n".join(
        unclassified
    )
    stale = sorted((set(RUNS) | set(SKIPPED)) - {e.key for e in ALL})
    assert not stale, f"no example starts with these any more: {stale}"


def test_the_extractor_reads_every_markdown_file_given(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "README.md").write_text("```python\nx = 1\n```\n```bash\nls\n```\n")
    (tmp_path / "docs" / "guide" / "use.md").write_text("text\n\n```python\ny = 2\nz = 3\n```\n")
    found = examples(markdown_files(tmp_path))
    assert [(e.path.name, e.line, e.code) for e in found] == [
        ("README.md", 2, "x = 1\n"),
        ("use.md", 4, "y = 2\nz = 3\n"),
    ]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Callable[[], Path]]]:
    built: dict[str, Path] = {}
    builders = build_models(tmp_path_factory.mktemp("readme"))

    def once(hub_id: str) -> Callable[[], Path]:
        def build() -> Path:
            if hub_id not in built:
                built[hub_id] = builders[hub_id]()
            return built[hub_id]

        return build

    yield {hub_id: once(hub_id) for hub_id in builders}


@pytest.fixture()
def llama_index_offline() -> Iterator[None]:
    """A query engine needs an LLM: a mock one, restored afterwards."""
    try:
        from llama_index.core import Settings
        from llama_index.core.llms import MockLLM
    except ImportError:
        yield
        return
    previous = Settings._llm
    Settings.llm = MockLLM()
    try:
        yield
    finally:
        Settings._llm = previous


@pytest.mark.parametrize("example", ALL, ids=str)
def test_the_example_runs(
    example: Example,
    models: dict[str, Callable[[], Path]],
    llama_index_offline: None,
) -> None:
    if example.key in SKIPPED:
        pytest.skip(SKIPPED[example.key])
    if example.key not in RUNS:
        pytest.fail(f"{example} is not classified (see the test above)")
    code = example.code
    for hub_id in sorted(set(HUB_ID.findall(code))):
        assert hub_id in models, f"{example}: no tiny checkpoint stands in for {hub_id!r}"
        code = code.replace(hub_id, models[hub_id]().as_posix())
    builders = context_builders()
    namespace: dict[str, Any] = {name: builders[name]() for name in RUNS[example.key]}
    exec(compile(code, str(example), "exec"), namespace)  # our own docs, nothing fetched
    check = CHECKS.get(example.key)
    if check is not None:
        check(namespace)


def _answers_concurrent_requests(namespace: dict[str, Any]) -> None:
    """The web-app examples: their handler answers several requests at once."""
    import asyncio

    import httpx

    async def many() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=namespace["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            body = {"query": "Which planet is the largest?", "passages": DOCUMENTS}
            return await asyncio.gather(*(client.post("/rerank", json=body) for _ in range(4)))

    answers = asyncio.run(many())
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    first = answers[0].json()
    assert first and set(first) <= set(DOCUMENTS)
    assert all(a.json() == first for a in answers)
    namespace["reranker"].scorer.close()


# The example's first line -> what is checked after it ran.
CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "from fastapi import FastAPI": _answers_concurrent_requests,
}
