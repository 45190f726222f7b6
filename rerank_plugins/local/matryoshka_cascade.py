"""A cascade inside one 2D-Matryoshka trunk: every candidate to an early exit, the best on.

Every pair runs the first ``exit_layer`` layers and is scored by that exit's head; the
``keep`` best documents (by that score) continue from their layer-``exit_layer`` hidden
states — kept from the first pass, nothing is recomputed — through the remaining layers
to the final exit and its head. Cost, in layers run per token: ``exit_layer`` for every
document plus ``layer - exit_layer`` for the kept ones, against ``layer`` for all.

The hidden states of every candidate at the early exit are held until the best are chosen
(``tokens x hidden`` values in the model's dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rerank_plugins.local.chunking import aggregate
from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.engine.modernbert import ModernBertTrunk
from rerank_plugins.local.engine.packing import PackedBatch, pack_sequences
from rerank_plugins.local.tokenization import ChunkedPair, EncodedPair
from rerank_plugins.ranking import rank
from rerank_plugins.scoring import Score, ScoreKind

__all__ = ["ExitCascade", "Readout"]

Readout = Callable[[torch.Tensor, PackedBatch], torch.Tensor]
"""An exit's head on raw hidden states: ``[T, hidden]`` of a packed batch → logits ``[B]``."""


class ExitCascade:
    """The two exits of a cascade on one trunk: ``exit_readout`` after ``exit_layer``
    layers, ``final_readout`` after ``layer`` layers (``exit_layer < layer``)."""

    def __init__(
        self,
        trunk: ModernBertTrunk,
        *,
        device: torch.device,
        exit_layer: int,
        layer: int,
        exit_readout: Readout,
        final_readout: Readout,
    ) -> None:
        if not 1 <= exit_layer < layer <= trunk.spec.num_layers:
            raise ValueError(f"need 1 <= exit_layer ({exit_layer}) < layer ({layer})")
        self.trunk = trunk
        self.device = device
        self.exit_layer = exit_layer
        self.layer = layer
        self.exit_readout = exit_readout
        self.final_readout = final_readout

    @torch.inference_mode()
    def score(
        self,
        pairs: Sequence[EncodedPair | ChunkedPair],
        *,
        keep: int,
        batch_tokens: int,
        value: Callable[[float], float],
        kind: ScoreKind,
    ) -> list[Score]:
        """One :class:`Score` per pair (one candidate list), in order: ``stage=1`` and the
        final exit's score for the ``keep`` best by the early exit, ``stage=0`` and the
        early exit's score for the others. ``value`` maps a logit to the reported value;
        a chunked document's windows are aggregated as usual (its windows all continue)."""
        units: list[EncodedPair] = []
        owner: list[int] = []
        for d, pair in enumerate(pairs):
            chunks = pair.chunks if isinstance(pair, ChunkedPair) else (pair,)
            units += chunks
            owner += [d] * len(chunks)
        first, hidden = self._first_stage(units, batch_tokens)
        exit_scores = self._documents(pairs, owner, [value(x) for x in first], kind, stage=0)
        kept = {r.index for r in rank(exit_scores, top_n=keep)}
        chosen = [i for i in range(len(units)) if owner[i] in kept]
        final = [0.0] * len(units)
        second = self._second_stage(units, hidden, chosen, batch_tokens)
        for i, logit in zip(chosen, second, strict=True):
            final[i] = value(logit)
        del hidden
        final_scores = self._documents(pairs, owner, final, kind, stage=1)
        return [final_scores[d] if d in kept else exit_scores[d] for d in range(len(pairs))]

    def _first_stage(
        self, units: Sequence[EncodedPair], batch_tokens: int
    ) -> tuple[list[float], list[torch.Tensor]]:
        logits = [0.0] * len(units)
        hidden: list[torch.Tensor] = [torch.empty(0)] * len(units)
        for batch in token_budget_batches(
            [len(u.ids) for u in units], max_tokens=batch_tokens, padded=False
        ):
            packed = pack_sequences([units[i].ids for i in batch], self.device)
            states = self.trunk.encode(packed, num_layers=self.exit_layer, final_norm=False)
            out = self.exit_readout(states, packed)
            for i, part, logit in zip(
                batch, states.split(list(packed.lengths)), out.float().cpu().tolist(), strict=True
            ):
                logits[i] = logit
                hidden[i] = part
        return logits, hidden

    def _second_stage(
        self,
        units: Sequence[EncodedPair],
        hidden: Sequence[torch.Tensor],
        chosen: Sequence[int],
        batch_tokens: int,
    ) -> list[float]:
        out = [0.0] * len(chosen)
        for batch in token_budget_batches(
            [len(units[i].ids) for i in chosen], max_tokens=batch_tokens, padded=False
        ):
            packed = pack_sequences([units[chosen[j]].ids for j in batch], self.device)
            states = torch.cat([hidden[chosen[j]] for j in batch])
            final = self.trunk.encode_exits(
                packed, [self.layer], final_norm=False, start=self.exit_layer, hidden=states
            )[0]
            logits = self.final_readout(final, packed)
            for j, logit in zip(batch, logits.float().cpu().tolist(), strict=True):
                out[j] = logit
        return out

    @staticmethod
    def _documents(
        pairs: Sequence[EncodedPair | ChunkedPair],
        owner: Sequence[int],
        values: Sequence[float],
        kind: ScoreKind,
        *,
        stage: int,
    ) -> list[Score]:
        per_doc: list[list[float]] = [[] for _ in pairs]
        for d, v in zip(owner, values, strict=True):
            per_doc[d].append(v)
        out = []
        for pair, vs in zip(pairs, per_doc, strict=True):
            chunked = isinstance(pair, ChunkedPair)
            out.append(
                Score(
                    value=aggregate(vs, pair.aggregate) if isinstance(pair, ChunkedPair) else vs[0],
                    kind=kind,
                    tokens=pair.tokens,
                    truncated=pair.truncated,
                    chunks=len(vs) if chunked else None,
                    stage=stage,
                )
            )
        return out
