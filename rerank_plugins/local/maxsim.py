"""Late-interaction (ColBERT) scoring: MaxSim as pure tensor functions.

``MaxSim(q, d) = sum_i max_j <q_i, d_j>`` over the query's token vectors ``q_i`` and the
document's token vectors ``d_j`` (both L2-normalised, so each term is a cosine). Documents of
different lengths are padded into one tensor with a boolean mask; padded positions are set
to ``-inf`` before the max, so a padded position can never win it (zero-padding without a
mask, as PyLate's ``rank.rerank`` does, lets a padding slot win with 0 whenever every real
similarity of a query token is negative).

>>> import torch
>>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> docs = [torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[0.0, -1.0]])]
>>> padded, mask = pad_vectors(docs)
>>> [round(x, 4) for x in maxsim(q, padded, mask).tolist()]
[1.8, -1.0]
>>> [round(x, 4) for x in maxsim(q, padded, mask, reduce="mean").tolist()]
[0.9, -0.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["Reduce", "maxsim", "maxsim_many", "pad_vectors"]

Reduce = Literal["sum", "mean"]
"""How the per-query-token maxima combine: their sum (ColBERT's score) or their mean."""


def pad_vectors(vectors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length token vectors into a padded tensor and its mask.

    ``vectors``: ``B`` tensors ``[L_b, D]`` (same dtype and device) → ``(padded [B, L, D],
    mask [B, L])`` with ``L = max L_b``, zeros on padding and ``mask`` true on real tokens.

    >>> p, m = pad_vectors([torch.ones(2, 3), torch.ones(1, 3)])
    >>> p.shape, m.tolist()
    (torch.Size([2, 2, 3]), [[True, True], [True, False]])
    """
    if not vectors:
        raise ValueError("pad_vectors needs at least one tensor")
    padded = torch.nn.utils.rnn.pad_sequence(list(vectors), batch_first=True)
    lengths = torch.tensor([int(v.shape[0]) for v in vectors])
    # Built on the host and copied over: no device tensor is indexed from Python.
    mask = torch.arange(padded.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    mask = mask.to(padded.device, non_blocking=True)
    return padded, mask


def maxsim(
    query: torch.Tensor,
    documents: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    query_mask: torch.Tensor | None = None,
    reduce: Reduce = "sum",
) -> torch.Tensor:
    """MaxSim of one query against a batch of padded documents.

    ``query [Lq, D]``, ``documents [B, Ld, D]``, ``mask [B, Ld]`` (true on real tokens;
    ``None`` when nothing is padded), ``query_mask [Lq]`` (true on query tokens that count;
    ``None`` for all) → fp32 ``[B]``. Similarities are computed in the inputs' dtype and
    reduced in fp32. ``reduce="mean"`` divides the sum by the number of counted query
    tokens. A document whose mask is all false scores ``-inf``.

    >>> q = torch.tensor([[1.0, 0.0]])
    >>> d = torch.tensor([[[-0.5, 0.0], [0.0, 0.0]]])
    >>> maxsim(q, d, torch.tensor([[True, False]])).tolist()  # padding never wins
    [-0.5]
    >>> maxsim(q, d).tolist()  # unmasked zero padding does (PyLate's rank.rerank)
    [0.0]
    """
    if query.dim() != 2 or documents.dim() != 3 or query.shape[-1] != documents.shape[-1]:
        raise ValueError(
            f"expected query [Lq, D] and documents [B, Ld, D], got {tuple(query.shape)} "
            f"and {tuple(documents.shape)}"
        )
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    sims = torch.matmul(documents, query.T.to(documents.dtype)).float()  # [B, Ld, Lq]
    if mask is not None:
        sims = sims.masked_fill(~mask.unsqueeze(2), float("-inf"))
    best = sims.amax(dim=1)  # [B, Lq]
    total = best.sum(dim=1) if query_mask is None else best.masked_fill(~query_mask, 0.0).sum(1)
    if reduce == "sum":
        return total
    if query_mask is None:
        return total / max(int(query.shape[0]), 1)
    return total / query_mask.sum().clamp(min=1)  # counted on the device: no read-back


def maxsim_many(
    query: torch.Tensor,
    documents: Sequence[torch.Tensor],
    *,
    reduce: Reduce = "sum",
    chunk_tokens: int = 131072,
    padded: bool | None = None,
) -> torch.Tensor:
    """MaxSim of one query against many unpadded documents.

    ``query [Lq, D]``, ``documents``: ``B`` tensors ``[L_b, D]`` → fp32 ``[B]`` in input
    order. Two strategies, same result: each document alone (``padded=False``, the default
    on the CPU, where it avoids copying the vectors and the similarity tensor stays in
    cache), or (``padded=True``, the default elsewhere: few kernel launches) documents in
    length order, padded in chunks of about ``chunk_tokens`` positions through
    :func:`maxsim` with their mask.

    >>> q = torch.tensor([[1.0, 0.0]])
    >>> docs = [torch.tensor([[0.5, 0.0]]), torch.tensor([[-1.0, 0.0], [0.2, 0.0]])]
    >>> maxsim_many(q, docs)
    tensor([0.5000, 0.2000])
    >>> torch.equal(maxsim_many(q, docs, padded=True), maxsim_many(q, docs, padded=False))
    True
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    out = torch.empty(len(documents), dtype=torch.float32, device=query.device)
    if not documents:
        return out
    if padded is None:
        padded = query.device.type != "cpu"
    if not padded:
        empty = query.new_tensor(float("-inf"), dtype=torch.float32)
        # [Lq, D] @ [D, L_b]: with few query rows this GEMM shape is the faster one on CPUs.
        alone = [
            torch.matmul(query.to(d.dtype), d.T).float().amax(dim=1).sum() if d.shape[0] else empty
            for d in documents
        ]
        out = torch.stack(alone)
        return out / query.shape[0] if reduce == "mean" else out
    order = sorted(range(len(documents)), key=lambda i: -int(documents[i].shape[0]))
    start = 0
    while start < len(order):
        longest = max(int(documents[order[start]].shape[0]), 1)
        size = max(1, chunk_tokens // longest)
        members = order[start : start + size]
        vectors, mask = pad_vectors([documents[i] for i in members])
        index = torch.tensor(members).to(out.device, non_blocking=True)
        out.index_copy_(0, index, maxsim(query, vectors, mask, reduce=reduce).to(out.device))
        start += size
    return out
