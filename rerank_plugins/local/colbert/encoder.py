"""Token ids to ColBERT token vectors on the device: trunk, projection, normalisation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.engine.modernbert import ModernBertTrunk, activation
from rerank_plugins.local.engine.packing import pack_sequences
from rerank_plugins.local.engine.rope import apply_rotary, default_inv_freq, rotary_cos_sin

__all__ = ["ColBERTEncoder", "encode_keys_limited", "filled"]


class ColBERTEncoder:
    """Token ids → L2-normalised token vectors: trunk → projection → normalisation.

    The device half of :class:`ColBERTScorer`, kept apart from tokenisation and caching so
    that it can be built from modules on any device (CI traces it on a fake CUDA device).
    Nothing is read back from the device: vectors stay there, and which tokens a document
    keeps is decided on the host from its ids.
    """

    def __init__(
        self,
        trunk: ModernBertTrunk,
        projection: nn.Module,
        *,
        skiplist_ids: frozenset[int],
        device: torch.device,
    ) -> None:
        self.trunk = trunk
        self.projection = projection
        self.skiplist_ids = skiplist_ids
        self.device = device

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` → fp32 ``[T, dim]`` unit vectors."""
        return F.normalize(self.projection(hidden.float()), p=2, dim=-1)

    @torch.inference_mode()
    def documents(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_tokens: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[torch.Tensor]:
        """Each document's vectors ``[n_i, dim]`` (skiplist tokens dropped), input order;
        ``progress(tokens)`` is called after each batch."""
        out: list[torch.Tensor | None] = [None] * len(ids)
        batches = token_budget_batches([len(i) for i in ids], max_tokens=batch_tokens, padded=False)
        skip = self.skiplist_ids
        for batch in batches:
            packed = pack_sequences([ids[i] for i in batch], self.device)
            vectors = self.project(self.trunk.encode(packed))
            # Kept tokens are chosen on the host (a device boolean mask would sync).
            kept = [j for j, t in enumerate(t for i in batch for t in ids[i]) if t not in skip]
            counts = [sum(t not in skip for t in ids[i]) for i in batch]
            index = torch.tensor(kept, dtype=torch.long).to(self.device, non_blocking=True)
            parts = vectors.index_select(0, index).split(counts)
            for i, part in zip(batch, parts, strict=True):
                out[i] = part.clone()  # its own storage: a cached entry holds only its rows
            if progress is not None:
                progress(sum(packed.lengths))  # tokens done (a progress bar)
        return filled(out)

    @torch.inference_mode()
    def query(self, ids: Sequence[int], *, keys: int | None = None) -> torch.Tensor:
        """The query's vectors ``[len(ids), dim]``; with ``keys=n`` every token attends
        only to the first ``n`` tokens (query expansion without attending to it)."""
        if keys is None or keys >= len(ids):
            hidden = self.trunk.encode(pack_sequences([ids], self.device))
        else:
            tensor = torch.tensor(list(ids), dtype=torch.long).to(self.device)
            hidden = encode_keys_limited(self.trunk, tensor, keys)
        return self.project(hidden)


def filled(items: list[Any]) -> list[Any]:
    missing = [i for i, v in enumerate(items) if v is None]
    if missing:
        raise AssertionError(f"no result at {missing}")  # every index is filled above
    return items


def encode_keys_limited(trunk: ModernBertTrunk, ids: torch.Tensor, n_keys: int) -> torch.Tensor:
    """The trunk's forward over one sequence ``ids [L]`` in which every token attends only to
    the first ``n_keys`` tokens (within its layer's window) → hidden states ``[L, hidden]``.

    This is ColBERT's query expansion without ``attend_to_expansion_tokens``: the real
    tokens never see the ``[MASK]`` padding, the padding sees the real tokens. The packed
    engine has no such asymmetric mask, and queries are a few dozen tokens, so this runs
    the same layer maths (as :meth:`ModernBertTrunk.encode_exits`) with a dense ``[L, L]``
    mask. A row with no visible key gets a zero attention output.
    """
    spec = trunk.spec
    length = int(ids.shape[0])
    heads, head_dim = spec.num_heads, spec.head_dim
    positions = torch.arange(length, device=ids.device)
    distance = (positions.unsqueeze(1) - positions.unsqueeze(0)).abs()
    keys = (positions < n_keys).unsqueeze(0)
    act = activation(spec.hidden_activation)
    x = trunk.embeddings.norm(trunk.embeddings.tok_embeddings(ids))
    tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(trunk.layers):
        layer_: Any = layer
        theta, window = spec.thetas[i], spec.windows[i]
        if theta not in tables:
            tables[theta] = rotary_cos_sin(default_inv_freq(head_dim, theta), positions)
        cos, sin = tables[theta]
        allowed = keys if window is None else keys & (distance <= window)
        allowed = allowed.expand(length, length)
        h = x if layer_.attn_norm is None else layer_.attn_norm(x)
        q, k, v = layer_.attn.Wqkv(h).view(length, 3, heads, head_dim).unbind(1)
        a = F.scaled_dot_product_attention(
            apply_rotary(q, cos, sin).transpose(0, 1),
            apply_rotary(k, cos, sin).transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=allowed.unsqueeze(0),
            scale=head_dim**-0.5,
        )  # [H, L, D]
        a = torch.where(allowed.any(dim=-1).view(1, length, 1), a, 0.0)
        x = x + layer_.attn.Wo(a.transpose(0, 1).reshape(length, spec.hidden_size))
        gate_in, gate = layer_.mlp.Wi(layer_.mlp_norm(x)).chunk(2, dim=-1)
        x = x + layer_.mlp.Wo(act(gate_in) * gate)
    out: torch.Tensor = trunk.final_norm(x)
    return out
