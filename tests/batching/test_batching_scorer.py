"""``BatchingScorer``: concurrent in-process calls share the server's batcher."""

from __future__ import annotations

import asyncio
import pickle
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins import load_scorer
from rerank_plugins.batching import BatchingScorer
from rerank_plugins.errors import InvalidInputError
from rerank_plugins.scoring import Score
from rerank_plugins.testing import FunctionScorer, random_text


@pytest.fixture(scope="module")
def plain(modernbert_dir: Path) -> Any:
    return load_scorer(modernbert_dir, device="cpu")


@pytest.fixture()
def batching(plain: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[BatchingScorer]:
    wrapped = BatchingScorer(plain)
    yield wrapped
    wrapped.close()


def _requests(seed: int, n: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [
        (
            random_text(rng, 6),
            [random_text(rng, rng.randint(3, 60)) for _ in range(rng.randint(1, 8))],
        )
        for _ in range(n)
    ]


def _values(scores: Sequence[Score]) -> list[float]:
    return [s.value for s in scores]


class _Forwards:
    """Counts the scorer calls that run forwards: the batcher's ``score_batch`` and a lone
    caller's direct ``score_pairs``."""

    def __init__(self, scorer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[int] = []
        self.direct: list[int] = []
        batch, pairs = scorer.score_batch, scorer.score_pairs

        def spy(pairs_: Sequence[Any], *, raw: bool = False) -> list[Score]:
            self.calls.append(len(pairs_))
            time.sleep(0.01)  # let the other callers queue behind this forward
            return batch(pairs_, raw=raw)  # type: ignore[no-any-return]

        def spy_direct(pairs_: Sequence[Any], *, raw: bool = False) -> list[Score]:
            self.direct.append(len(pairs_))
            time.sleep(0.01)
            return pairs(pairs_, raw=raw)  # type: ignore[no-any-return]

        monkeypatch.setattr(scorer, "score_batch", spy)
        monkeypatch.setattr(scorer, "score_pairs", spy_direct)

    @property
    def forwards(self) -> int:
        return len(self.calls) + len(self.direct)

    @property
    def pairs(self) -> int:
        return sum(self.calls) + sum(self.direct)


async def test_concurrent_ascore_calls_share_forwards_and_keep_their_order(
    plain: Any, batching: BatchingScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _requests(0, 24)
    expected = [plain.score(q, d) for q, d in requests]
    forwards = _Forwards(plain, monkeypatch)
    got = await asyncio.gather(*(batching.ascore(q, d) for q, d in requests))
    for want, have in zip(expected, got, strict=True):
        assert _values(have) == pytest.approx(_values(want), abs=1e-5)
        assert [s.tokens for s in have] == [s.tokens for s in want]
    assert forwards.pairs == sum(len(d) for _, d in requests)
    assert forwards.forwards < len(requests)  # calls were merged


def test_threads_and_event_loops_at_once(
    plain: Any, batching: BatchingScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _requests(1, 16)
    expected = [plain.score(q, d) for q, d in requests]
    forwards = _Forwards(plain, monkeypatch)
    results: dict[int, list[Score]] = {}
    start = threading.Barrier(9)

    def sync_caller(k: int) -> None:
        start.wait()
        results[k] = batching.score(*requests[k])

    def async_callers() -> None:
        async def main() -> None:
            start.wait()
            answers = await asyncio.gather(*(batching.ascore(*requests[k]) for k in range(8, 16)))
            results.update(zip(range(8, 16), answers, strict=True))

        asyncio.run(main())

    workers = [threading.Thread(target=sync_caller, args=(k,)) for k in range(8)]
    workers.append(threading.Thread(target=async_callers))
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert sorted(results) == list(range(16))
    for k, want in enumerate(expected):
        assert _values(results[k]) == pytest.approx(_values(want), abs=1e-5)
    assert forwards.pairs == sum(len(d) for _, d in requests)
    assert forwards.forwards < len(requests)


def test_a_lone_caller_runs_directly_and_gets_what_the_scorer_gives(
    plain: Any, batching: BatchingScorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    query, docs = _requests(2, 1)[0]
    want = _values(plain.score(query, docs))
    forwards = _Forwards(plain, monkeypatch)
    assert _values(batching.score(query, docs)) == pytest.approx(want, abs=1e-5)
    assert _values(asyncio.run(batching.ascore(query, docs))) == pytest.approx(want, abs=1e-5)
    # nothing ran or waited: both went straight to the scorer, no batching thread started
    assert forwards.direct == [len(docs), len(docs)] and forwards.calls == []
    assert batching._runner is None
    assert asyncio.run(batching.ascore(query, [])) == []
    assert batching.score(query, []) == []
    assert batching.name == plain.name and batching.max_length == plain.max_length


def test_the_scorers_truncation_policy_applies(modernbert_dir: Path) -> None:
    strict = BatchingScorer(
        load_scorer(modernbert_dir, device="cpu", max_length=32, overflow="error")
    )
    cut = BatchingScorer(load_scorer(modernbert_dir, device="cpu", max_length=32))
    try:
        long = " ".join(["word"] * 100)
        with pytest.raises(InvalidInputError):
            strict.score("q", ["short", long])
        assert [s.truncated for s in cut.score("q", ["short", long])] == [False, True]
    finally:
        strict.close()
        cut.close()


def _slow(gate: threading.Event, seen: list[str]) -> FunctionScorer:
    def fn(query: str, document: str) -> float:
        seen.append(document)
        if document == "poison":
            raise RuntimeError("poisoned document")
        gate.wait(timeout=30)
        return float(len(document))

    return FunctionScorer(fn)


async def test_cancelling_a_call_drops_its_pending_pairs() -> None:
    gate = threading.Event()
    seen: list[str] = []
    scorer = BatchingScorer(_slow(gate, seen))
    try:
        first = asyncio.ensure_future(scorer.ascore("q", ["first"]))
        while "first" not in seen:  # the first forward is running and holds the batcher
            await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(scorer.ascore("q", ["gone 1", "gone 2"]))
        kept = asyncio.ensure_future(scorer.ascore("q", ["kept"]))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        assert _values(await first) == [5.0]
        assert _values(await kept) == [4.0]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert "gone 1" not in seen and "gone 2" not in seen
    finally:
        gate.set()
        scorer.close()


async def test_an_error_reaches_only_its_caller() -> None:
    gate = threading.Event()
    seen: list[str] = []
    scorer = BatchingScorer(_slow(gate, seen))
    try:
        first = asyncio.ensure_future(scorer.ascore("q", ["first"]))
        while "first" not in seen:
            await asyncio.sleep(0.005)
        # queued behind the first forward: they land in one batch together
        calls = [
            asyncio.ensure_future(scorer.ascore("q", docs))
            for docs in (["a", "bb"], ["poison", "ccc"], ["dddd"])
        ]
        bad_input = asyncio.ensure_future(scorer.ascore("", ["empty query"]))
        await asyncio.sleep(0.05)
        gate.set()
        results = await asyncio.gather(first, *calls, bad_input, return_exceptions=True)
        assert _values(results[0]) == [5.0]  # type: ignore[arg-type]
        assert _values(results[1]) == [1.0, 2.0]  # type: ignore[arg-type]
        assert isinstance(results[2], RuntimeError) and "poison" in str(results[2])
        assert _values(results[3]) == [4.0]  # type: ignore[arg-type]
        assert isinstance(results[4], InvalidInputError)
    finally:
        gate.set()
        scorer.close()


def test_load_scorer_and_the_adapters_take_batching(modernbert_dir: Path) -> None:
    scorer = load_scorer(modernbert_dir, device="cpu", batching=True)
    assert isinstance(scorer, BatchingScorer)
    copy = pickle.loads(pickle.dumps(scorer))
    assert isinstance(copy, BatchingScorer) and copy is not scorer
    assert _values(copy.score("q", ["a b c"])) == pytest.approx(
        _values(scorer.score("q", ["a b c"])), abs=1e-6
    )
    copy.close()
    scorer.close()
    with pytest.raises(InvalidInputError):
        BatchingScorer(scorer)  # type: ignore[arg-type]


def test_the_langchain_compressor_takes_batching(modernbert_dir: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    compressor = RerankCompressor(
        model=str(modernbert_dir), model_kwargs={"device": "cpu"}, batching=True, top_n=None
    )
    assert isinstance(compressor.scorer, BatchingScorer)
    docs = [Document(page_content=t) for t in ("alpha beta", "gamma", "delta epsilon zeta")]

    async def many() -> list[Any]:
        return await asyncio.gather(*(compressor.acompress_documents(docs, "q") for _ in range(8)))

    answers = asyncio.run(many())
    plain = RerankCompressor(model=str(modernbert_dir), model_kwargs={"device": "cpu"}, top_n=None)
    want = [d.metadata["relevance_score"] for d in plain.compress_documents(docs, "q")]
    for answer in answers:
        assert [d.metadata["relevance_score"] for d in answer] == pytest.approx(want, abs=1e-5)
    compressor.scorer.close()


def test_the_llama_index_postprocessor_takes_batching(modernbert_dir: Path) -> None:
    pytest.importorskip("llama_index.core")
    from rerank_plugins.llama_index import RerankPostprocessor

    post = RerankPostprocessor(
        model=str(modernbert_dir), model_kwargs={"device": "cpu"}, batching=True
    )
    assert isinstance(post.scorer, BatchingScorer)
    post.scorer.close()


def test_a_batching_scorer_never_closed_exits_quietly(modernbert_dir: Path) -> None:
    # The batching thread's loop is stopped at interpreter exit with its task cancelled:
    # no "Task was destroyed but it is pending!" on stderr.
    code = (
        "import asyncio\n"
        "from rerank_plugins import load_scorer\n"
        f"s = load_scorer({str(modernbert_dir)!r}, device='cpu', batching=True)\n"
        "async def main():\n"
        "    return await asyncio.gather(*(s.ascore('q', ['a b c', 'd e']) for _ in range(4)))\n"
        "print(sum(len(r) for r in asyncio.run(main())))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "8"
    assert "Task was destroyed" not in done.stderr
    assert "Traceback" not in done.stderr
