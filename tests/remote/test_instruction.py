"""``RemoteScorer(instruction=...)``: sent in the dialect's own field (cohere, tei:
``instruction``; sglang: ``instruct``), refused where an API has none, part of the
scorer's identity; through the ``FakeRerankServer`` twin of each dialect."""

from __future__ import annotations

import pickle
from typing import Any

import httpx
import pytest

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.identity import scorer_identity
from rerank_plugins.remote import DIALECTS, RemoteScorer
from rerank_plugins.scoring import takes_instruction, with_instruction
from rerank_plugins.testing.fake_server import FakeRerankServer, fake_probability

QUERY = "w1 w2"
DOCS = ["w1 w3", "w4", "w2 w1 w5", "w6 w7"]
INSTRUCTION = "Find the passages that share a word with the query"

FIELDS = {"cohere": "instruction", "tei": "instruction", "sglang": "instruct"}
WITHOUT = sorted(set(DIALECTS) - set(FIELDS))


def served(dialect: str, **options: Any) -> tuple[RemoteScorer, FakeRerankServer]:
    server = FakeRerankServer(dialect)
    transport = httpx.MockTransport(server.handle)
    scorer = RemoteScorer(
        "http://rerank.test",
        dialect=dialect,  # type: ignore[arg-type]
        api_key_env=None,
        client=httpx.Client(transport=transport),
        async_client=httpx.AsyncClient(transport=transport),
        **options,
    )
    return scorer, server


def test_the_dialects_that_carry_an_instruction() -> None:
    assert {n: d.instruction_field for n, d in DIALECTS.items() if d.instruction_field} == FIELDS


@pytest.mark.parametrize("dialect", sorted(FIELDS))
def test_the_instruction_travels_in_the_dialects_field(dialect: str) -> None:
    scorer, server = served(dialect, instruction=INSTRUCTION)
    assert takes_instruction(scorer)
    scores = scorer.score(QUERY, DOCS)
    (body,) = server.requests
    assert body[FIELDS[dialect]] == INSTRUCTION
    # The fake server scores the instruction with the query: it reached the scoring.
    told = f"{INSTRUCTION}\n{QUERY}"
    assert [s.value for s in scores] == pytest.approx([fake_probability(told, d) for d in DOCS])
    assert [s.value for s in scores] != pytest.approx([fake_probability(QUERY, d) for d in DOCS])


@pytest.mark.parametrize("dialect", sorted(FIELDS))
async def test_a_call_replaces_the_scorers_instruction(dialect: str) -> None:
    scorer, server = served(dialect, instruction=INSTRUCTION)
    scorer.score(QUERY, DOCS, instruction="other")
    await scorer.ascore(QUERY, DOCS, instruction="async other")
    await scorer.ascore(QUERY, DOCS)
    assert [b[FIELDS[dialect]] for b in server.requests] == ["other", "async other", INSTRUCTION]


@pytest.mark.parametrize("dialect", sorted(FIELDS))
def test_no_instruction_sends_no_field(dialect: str) -> None:
    scorer, server = served(dialect)
    assert scorer.instruction is None
    scores = scorer.score(QUERY, DOCS)
    assert FIELDS[dialect] not in server.requests[0]
    assert [s.value for s in scores] == pytest.approx([fake_probability(QUERY, d) for d in DOCS])


def test_every_batch_of_a_split_call_carries_it() -> None:
    scorer, server = served("tei", instruction=INSTRUCTION, max_batch_size=2)
    scorer.score(QUERY, DOCS)
    assert len(server.requests) == 2
    assert all(b["instruction"] == INSTRUCTION for b in server.requests)


@pytest.mark.parametrize("dialect", WITHOUT)
def test_a_dialect_without_a_field_refuses_an_instruction(dialect: str) -> None:
    with pytest.raises(InvalidInputError, match="no instruction field") as info:
        served(dialect, instruction=INSTRUCTION)
    assert "cohere, sglang, tei" in str(info.value)
    scorer, server = served(dialect)
    assert not takes_instruction(scorer)
    with pytest.raises(InvalidInputError, match="no instruction field"):
        scorer.score(QUERY, DOCS, instruction=INSTRUCTION)
    assert server.requests == []  # refused before anything was sent
    # The adapters' helper refuses it too, naming what the user set.
    with pytest.raises(InvalidInputError, match="RerankCompressor"):
        with_instruction(scorer, INSTRUCTION, option="RerankCompressor(instruction=...)")


async def test_an_async_call_with_an_instruction_is_refused_too() -> None:
    scorer, server = served("voyage")
    with pytest.raises(InvalidInputError, match="no instruction field"):
        await scorer.ascore(QUERY, DOCS, instruction=INSTRUCTION)
    assert server.requests == []


def test_the_adapters_helper_binds_it_into_every_call() -> None:
    scorer, server = served("cohere")
    bound = with_instruction(scorer, INSTRUCTION, option="instruction")
    bound.score(QUERY, DOCS)
    assert server.requests[0]["instruction"] == INSTRUCTION


@pytest.mark.parametrize("bad", [3, b"bytes", ["x"]])
def test_an_instruction_that_is_not_a_str_is_refused(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="must be a str"):
        served("cohere", instruction=bad)
    scorer, _ = served("cohere")
    with pytest.raises(InvalidInputError, match="must be a str"):
        scorer.score(QUERY, DOCS, instruction=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("dialect", sorted(FIELDS))
def test_extra_body_cannot_carry_the_field(dialect: str) -> None:
    with pytest.raises(InvalidInputError, match="instruction=") as info:
        served(dialect, extra_body={FIELDS[dialect]: INSTRUCTION})
    assert FIELDS[dialect] in str(info.value)


def test_the_identity_tells_instructions_apart() -> None:
    plain, _ = served("cohere")
    told, _ = served("cohere", instruction=INSTRUCTION)
    other, _ = served("cohere", instruction="other")
    assert scorer_identity(told)["instruction"] == INSTRUCTION
    assert scorer_identity(plain)["instruction"] is None
    ids = [scorer_identity(s) for s in (plain, told, other)]
    assert ids[0] != ids[1] != ids[2] != ids[0]


def test_a_pickled_scorer_keeps_its_instruction() -> None:
    scorer, _ = served("sglang", instruction=INSTRUCTION)
    copy = pickle.loads(pickle.dumps(scorer))
    assert copy.instruction == INSTRUCTION
    assert scorer_identity(copy) == scorer_identity(scorer)
