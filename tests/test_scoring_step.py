"""The one scoring step: group by query, score each query once, checked, in input order."""

from __future__ import annotations

import pytest

from rerank_plugins.errors import InvalidInputError, ScoringError
from rerank_plugins.scoring import Score, ascore_groups, score_groups
from rerank_plugins.testing import FunctionScorer


class _Counting(FunctionScorer):
    def __init__(self) -> None:
        super().__init__(lambda q, d: float(len(q) * 100 + len(d)))
        self.seen: list[tuple[str, list[str]]] = []

    def score(self, query, documents):  # type: ignore[no-untyped-def]
        self.seen.append((query, list(documents)))
        return super().score(query, documents)

    async def ascore(self, query, documents):  # type: ignore[no-untyped-def]
        self.seen.append((query, list(documents)))
        return super().score(query, documents)


GROUPS = [("a", ["x", "yy"]), ("bb", ["zzz"]), ("a", ["wwww"]), ("bb", []), ("a", ["v"])]


def _values(out: list[list[Score]]) -> list[list[float]]:
    return [[s.value for s in g] for g in out]


EXPECTED = [[101.0, 102.0], [203.0], [104.0], [], [101.0]]


def test_each_query_is_scored_once_and_results_follow_input_order() -> None:
    scorer = _Counting()
    assert _values(score_groups(scorer, GROUPS)) == EXPECTED
    assert scorer.seen == [("a", ["x", "yy", "wwww", "v"]), ("bb", ["zzz"])]


async def test_async_twin_gives_the_same_results() -> None:
    scorer = _Counting()
    assert _values(await ascore_groups(scorer, GROUPS)) == EXPECTED
    assert scorer.seen == [("a", ["x", "yy", "wwww", "v"]), ("bb", ["zzz"])]


def test_pairs_are_groups_of_one() -> None:
    pairs = [("q1", "a"), ("q2", "bb"), ("q1", "ccc")]
    out = score_groups(_Counting(), [(q, [d]) for q, d in pairs])
    assert [g[0].value for g in out] == [201.0, 202.0, 203.0]


def test_a_scorer_that_drops_results_is_refused() -> None:
    class Dropping(FunctionScorer):
        def score(self, query, documents):  # type: ignore[no-untyped-def]
            return super().score(query, documents)[:-1]

    with pytest.raises(ScoringError, match="returned 1 results for 2"):
        score_groups(Dropping(lambda q, d: 0.0), [("q", ["a", "b"])])


def test_error_indices_name_positions_in_the_input() -> None:
    class RefusesZ(FunctionScorer):
        def score(self, query, documents):  # type: ignore[no-untyped-def]
            bad = [i for i, d in enumerate(documents) if d == "z"]
            if bad:
                raise InvalidInputError("z refused", indices=bad)
            return super().score(query, documents)

    groups = [("q", ["a", "b"]), ("r", ["c"]), ("q", ["z"])]
    with pytest.raises(InvalidInputError) as info:
        score_groups(RefusesZ(lambda q, d: 0.0), groups)
    assert info.value.indices == (3,)  # group 2, document 0 -> flat position 2 + 1


@pytest.mark.parametrize("bad", ["q", [("q",)], [("q", ["a"], 1)], 3])
def test_malformed_groups_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        score_groups(_Counting(), bad)  # type: ignore[arg-type]


async def test_concurrent_async_runs_the_queries_together_and_keeps_input_order() -> None:
    import asyncio

    running: set[str] = set()
    overlapped: list[bool] = []

    class Slow(_Counting):
        async def ascore(self, query, documents):  # type: ignore[no-untyped-def]
            running.add(query)
            await asyncio.sleep(0.01)
            overlapped.append(len(running) > 1)
            running.discard(query)
            return await super().ascore(query, documents)

    scorer = Slow()
    assert _values(await ascore_groups(scorer, GROUPS, concurrent=True)) == EXPECTED
    assert any(overlapped)  # the two distinct queries were in flight together
    assert sorted(scorer.seen) == [("a", ["x", "yy", "wwww", "v"]), ("bb", ["zzz"])]


async def test_concurrent_too_long_errors_of_several_queries_are_merged() -> None:
    from rerank_plugins.errors import InputTooLongError

    class Refusing(FunctionScorer):
        async def ascore(self, query, documents):  # type: ignore[no-untyped-def]
            raise InputTooLongError("too long", indices=[len(documents) - 1])

    scorer = Refusing(lambda q, d: 0.0)
    with pytest.raises(InputTooLongError) as info:
        await ascore_groups(scorer, [("a", ["x", "y"]), ("b", ["z"])], concurrent=True)
    assert info.value.indices == (1, 2)


def test_a_query_that_is_not_a_string_is_refused_with_its_positions() -> None:
    with pytest.raises(InvalidInputError, match="query must be a str") as info:
        score_groups(FunctionScorer(lambda q, d: 0.0), [("a", ["x"]), (["q"], ["y", "z"])])  # type: ignore[list-item]
    assert info.value.indices == (1, 2)
