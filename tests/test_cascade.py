"""``Cascade(first, second, keep=K)``: the K best by ``first`` are re-scored by ``second``,
ranked first whatever the two scales; sync and async; errors name input positions."""

from __future__ import annotations

import pickle

import pytest

from rerank_plugins import Cascade, InvalidInputError, Score, ScoringError, rank
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.testing import FunctionScorer
from tests.contract import QUERY, ScorerContract

DOCS = ["a", "bbbbb", "cc", "dddd", "e", "fff"]


def cheap(q: str, d: str) -> float:
    return float(len(d))  # prefers long documents


def costly(q: str, d: str) -> float:
    return -100.0 - float(len(d))  # prefers short ones, on a lower scale


def test_the_k_best_by_the_first_stage_get_the_second_stages_score() -> None:
    first, second = FunctionScorer(cheap), FunctionScorer(costly)
    scores = Cascade(first, second, keep=3).score(QUERY, DOCS)
    kept = {1, 3, 5}  # the three longest
    for i, (doc, s) in enumerate(zip(DOCS, scores, strict=True)):
        assert s.stage == (1 if i in kept else 0)
        assert s.value == (costly(QUERY, doc) if i in kept else cheap(QUERY, doc))
    assert first.calls == second.calls == 1


def test_rank_puts_the_second_stage_first_whatever_the_values() -> None:
    scores = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=3).score(QUERY, DOCS)
    order = [r.index for r in rank(scores)]
    assert order == [5, 3, 1, 2, 0, 4]  # fff, dddd, bbbbb by costly; then cc, a, e by cheap
    assert [r.index for r in rank(scores, top_n=2)] == [5, 3]


def test_keep_beyond_the_list_rescores_everything() -> None:
    scores = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=50).score(QUERY, DOCS)
    assert [s.value for s in scores] == [costly(QUERY, d) for d in DOCS]


def test_cascades_nest() -> None:
    inner = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=4)
    outer = Cascade(inner, FunctionScorer(lambda q, d: float(d < "c")), keep=1)
    scores = outer.score(QUERY, DOCS)
    # inner keeps bbbbb, dddd, fff, cc; of those costly likes cc best; outer re-scores it.
    assert [s.stage for s in scores] == [0, 1, 2, 1, 0, 1]
    assert [r.index for r in rank(scores)] == [2, 5, 3, 1, 0, 4]


async def test_async_equals_sync() -> None:
    cascade = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=2)
    assert await cascade.ascore(QUERY, DOCS) == cascade.score(QUERY, DOCS)


class _Failing:
    name = "failing"

    def score(self, query: str, documents: list[str]) -> list[Score]:
        raise ScoringError("the second stage failed on its second document", indices=[1])

    async def ascore(self, query: str, documents: list[str]) -> list[Score]:
        return self.score(query, documents)


@pytest.mark.parametrize("use_async", [False, True])
async def test_second_stage_errors_name_input_positions(use_async: bool) -> None:
    cascade = Cascade(FunctionScorer(cheap), _Failing(), keep=3)  # keeps 1, 3, 5
    with pytest.raises(ScoringError) as info:
        if use_async:
            await cascade.ascore(QUERY, DOCS)
        else:
            cascade.score(QUERY, DOCS)
    assert info.value.indices == (3,)


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, None])
def test_bad_keep_is_refused(keep: object) -> None:
    with pytest.raises(InvalidInputError):
        Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=keep)  # type: ignore[arg-type]


def test_stages_must_be_scorers() -> None:
    with pytest.raises(InvalidInputError):
        Cascade(FunctionScorer(cheap), "costly", keep=1)  # type: ignore[arg-type]


def test_a_cascade_pickles() -> None:
    cascade = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=2)
    copy = pickle.loads(pickle.dumps(cascade))
    assert copy.keep == 2 and copy.score(QUERY, DOCS) == cascade.score(QUERY, DOCS)


def test_both_adapters_order_by_stage() -> None:
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, TextNode

    cascade = Cascade(FunctionScorer(cheap), FunctionScorer(costly), keep=3)
    compressed = RerankCompressor(scorer=cascade, top_n=6).compress_documents(
        [Document(page_content=d) for d in DOCS], QUERY
    )
    assert [d.page_content for d in compressed] == ["fff", "dddd", "bbbbb", "cc", "a", "e"]
    nodes = RerankPostprocessor(scorer=cascade, top_n=4).postprocess_nodes(
        [NodeWithScore(node=TextNode(text=d)) for d in DOCS], query_str=QUERY
    )
    assert [n.node.get_content() for n in nodes] == ["fff", "dddd", "bbbbb", "cc"]


class TestCascade(ScorerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def scorer(cls) -> Cascade:
        words = FunctionScorer(lambda q, d: float(len(d.split())))
        overlap = FunctionScorer(lambda q, d: len(set(q.split()) & set(d.split())) + len(d) / 1e3)
        return Cascade(words, overlap, keep=3)

    def test_one_score_per_document_in_input_order(self, scorer: Cascade, docs: list[str]) -> None:
        # Alone, a document is always kept; in a list only the three best by the first stage.
        scores = scorer.score(QUERY, docs)
        assert len(scores) == len(docs) and sum(s.stage == 1 for s in scores) == 3
        for doc, s in zip(docs, scores, strict=True):
            stage = scorer.second if s.stage == 1 else scorer.first
            assert s.value == pytest.approx(stage.score(QUERY, [doc])[0].value, abs=1e-12)
