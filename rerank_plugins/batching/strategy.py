"""The batching strategy: how a caller's pairs are prepared and a batch of them scored.

The server and the in-process :class:`~rerank_plugins.batching.BatchingScorer` use it
alike. Two ways to drive a scorer, chosen by what it offers:

- :class:`PairStrategy` for a :class:`~rerank_plugins.scoring.PairScorer` (the local
  cross-encoders): pairs are tokenised per request, with the request's own truncation
  policy, and batches mix pairs of different requests and queries in one forward.
- :class:`GroupedStrategy` for any other scorer (remote endpoints, ColBERT): a batch goes
  through :func:`~rerank_plugins.scoring.score_groups` (one ``scorer.score`` per query);
  lengths are estimated from the text (about four bytes a token), and the scorer's own
  truncation applies.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from rerank_plugins.errors import InputTooLongError, InvalidInputError
from rerank_plugins.scoring import (
    OverflowPolicy,
    PairScorer,
    Score,
    Scorer,
    check_inputs,
    check_scores,
    score_groups,
    takes_instruction,
    with_instruction,
)

__all__ = ["GroupedStrategy", "PairStrategy", "Prepared", "Strategy", "strategy_for"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request made ready for the batcher: items, their token lengths, the batch key."""

    items: list[Any]
    lengths: list[int]
    key: Hashable


class Strategy:
    """How the server prepares requests for, and runs batches on, one scorer."""

    #: whether ``truncate`` / ``max_document_tokens`` are applied per request
    per_request_truncation: bool = False
    #: how the batcher costs a batch: ``len(batch) * longest`` (True) or the sum
    padded: bool = False

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        #: a request's documents are one candidate list (a cascade keeps the K best of
        #: them: ``scores_whole_list``): run them alone, whole, never split nor merged
        self.whole_requests = bool(getattr(scorer, "scores_whole_list", False))

    def prepare(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool | None,
        max_document_tokens: int | None = None,
        raw: bool = False,
        instruction: str | None = None,
    ) -> Prepared:
        """Check and prepare one query's documents; raises like ``scorer.score``.

        ``truncate``: cut documents over the window (True), refuse them (False), or do as
        the scorer's own ``overflow`` policy says (None). ``instruction`` (decoder
        rerankers) replaces the scorer's default instruction; a scorer whose ``score``
        takes none refuses it with :class:`InvalidInputError`."""
        raise NotImplementedError

    def run_batch(self, key: Hashable, items: list[Any]) -> list[Score]:
        """One :class:`Score` per item, in order (runs on the batcher's worker thread)."""
        raise NotImplementedError

    def run_all(self, key: Hashable, items: list[Any]) -> list[Score]:
        """Like :meth:`run_batch` for items of any total size (the scorer budgets them)."""
        return self.run_batch(key, items)

    def check(
        self,
        scores: Sequence[Score],
        *,
        truncate: bool | None,
        max_document_tokens: int | None = None,
    ) -> None:
        """Refuse results the request said it did not want (truncated with truncation off;
        ``truncate=None``: the scorer's own policy applied, nothing to refuse)."""
        if truncate is None or truncate:
            return
        cut = [i for i, s in enumerate(scores) if s.truncated]
        if cut:
            limit = (
                f"max_tokens_per_doc ({max_document_tokens}) or the model's token window"
                if max_document_tokens is not None and self.per_request_truncation
                else "the model's token window"
            )
            raise InputTooLongError(
                f"documents {cut} exceed {limit} and truncate is off", indices=cut
            )


class PairStrategy(Strategy):
    per_request_truncation = True

    def __init__(self, scorer: PairScorer) -> None:
        super().__init__(scorer)
        self.pair_scorer = scorer
        self.padded = bool(scorer.padded)

    def prepare(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool | None,
        max_document_tokens: int | None = None,
        raw: bool = False,
        instruction: str | None = None,
    ) -> Prepared:
        _check_instruction(self.scorer, instruction)
        overflow: OverflowPolicy | None = None
        if getattr(self.pair_scorer, "overflow", None) == "chunk":
            # A scorer built with overflow="chunk" chunks: nothing is cut, so truncate=false
            # has nothing to refuse.
            overflow = "chunk"
        elif truncate is not None:
            overflow = "truncate" if truncate else "error"
        pairs = list(
            self.pair_scorer.encode_pairs(
                query,
                documents,
                overflow=overflow,
                max_document_tokens=max_document_tokens,
            )
        )
        return Prepared(pairs, [p.tokens for p in pairs], key=raw)

    def run_batch(self, key: Hashable, items: list[Any]) -> list[Score]:
        # The batcher formed this batch by the scorer's budget and cost model, longest
        # first: it runs as one forward, neither re-budgeted nor re-sorted.
        return check_scores(self.pair_scorer.score_batch(items, raw=bool(key)), len(items))

    def run_all(self, key: Hashable, items: list[Any]) -> list[Score]:
        return check_scores(self.pair_scorer.score_pairs(items, raw=bool(key)), len(items))


def _estimate_tokens(query: str, document: str) -> int:
    # For budgeting only: about four UTF-8 bytes per token, plus the special tokens.
    return (len(query.encode()) + len(document.encode())) // 4 + 3


class GroupedStrategy(Strategy):
    def prepare(
        self,
        query: str,
        documents: Sequence[str],
        *,
        truncate: bool | None,
        max_document_tokens: int | None = None,
        raw: bool = False,
        instruction: str | None = None,
    ) -> Prepared:
        docs = check_inputs(query, documents)
        _check_instruction(self.scorer, instruction)
        if max_document_tokens is not None:
            raise InvalidInputError(
                "max_tokens_per_doc is applied per request by the local cross-encoders; "
                "this server's scorer takes it at start-up (--max-tokens-per-doc)"
            )
        items = [(query, d) for d in docs]
        # Batched by instruction: a batch runs one instruction (one shared prompt prefix).
        return Prepared(items, [_estimate_tokens(query, d) for d in docs], key=instruction)

    def run_batch(self, key: Hashable, items: list[Any]) -> list[Score]:
        scorer = with_instruction(
            self.scorer, None if key is None else str(key), option="instruction"
        )
        scored = score_groups(scorer, [(query, [document]) for query, document in items])
        return [group[0] for group in scored]


def _check_instruction(scorer: Scorer, instruction: str | None) -> None:
    if instruction is not None and not takes_instruction(scorer):
        raise InvalidInputError(
            "this model takes no instruction (only decoder rerankers such as "
            "Qwen3-Reranker and mxbai-rerank-v2 do); leave the instruction field out"
        )


def strategy_for(scorer: Scorer) -> Strategy:
    """The strategy that batches ``scorer`` best."""
    if isinstance(scorer, PairScorer):
        return PairStrategy(scorer)
    return GroupedStrategy(scorer)
