"""Packed batches: sequences on one token axis, described by ``cu_seqlens`` (no padding).

>>> import torch
>>> batch = pack_sequences([[5, 6, 7], [8, 9]], torch.device("cpu"))
>>> batch.position_ids.tolist(), batch.cu_seqlens.tolist(), batch.max_seqlen
([0, 1, 2, 0, 1], [0, 3, 5], 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rerank_plugins.errors import InvalidInputError

__all__ = ["PackedBatch", "host_seq_ids", "pack_sequences"]


@dataclass(frozen=True, eq=False)
class PackedBatch:
    """A batch of sequences packed on one token axis of ``T = sum(lengths)`` tokens.

    ``input_ids [T]`` long and ``position_ids [T]`` long (restarting at 0 for each
    sequence), ``cu_seqlens [B+1]`` int32 (sequence ``b`` is ``cu_seqlens[b]:cu_seqlens[b+1]``),
    all on the device; ``lengths`` and ``max_seqlen`` on the host. ``cache`` holds masks and
    index plans that the layers of one forward share (they depend only on the batch).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: tuple[int, ...]
    max_seqlen: int
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_ids(self) -> torch.Tensor:
        """Sequence index of every token, long ``[T]`` on the device."""
        ids = self.cache.get("seq_ids")
        if ids is None:
            # Built on the host from the host lengths: a device repeat_interleave without
            # output_size would read its output size back from the GPU (a sync).
            ids = host_seq_ids(self.lengths).to(self.input_ids.device, non_blocking=True)
            self.cache["seq_ids"] = ids
        return ids

    @property
    def starts(self) -> torch.Tensor:
        """Index of every sequence's first token (its CLS), long ``[B]`` on the device."""
        # narrow, not [:-1]: Python indexing needs a device guard that fake CUDA lacks.
        return self.cu_seqlens.narrow(0, 0, len(self.lengths)).long()

    @property
    def ends(self) -> torch.Tensor:
        """Index of every sequence's last token (its SEP), long ``[B]`` on the device."""
        return self.cu_seqlens.narrow(0, 1, len(self.lengths)).long() - 1


def host_seq_ids(lengths: Sequence[int]) -> torch.Tensor:
    """Sequence index of every token on the CPU, long ``[sum(lengths)]``."""
    counts = torch.tensor(lengths, dtype=torch.long)
    return torch.repeat_interleave(
        torch.arange(len(lengths)), counts, output_size=int(sum(lengths))
    )


def pack_sequences(sequences: Sequence[Sequence[int]], device: torch.device) -> PackedBatch:
    """Pack token id sequences (each non-empty) into one :class:`PackedBatch` on ``device``."""
    lengths = tuple(len(s) for s in sequences)
    if not lengths or min(lengths) == 0:
        raise InvalidInputError("pack_sequences needs at least one sequence, none of them empty")
    flat = [t for s in sequences for t in s]
    ids = torch.tensor(flat, dtype=torch.long)
    counts = torch.tensor(lengths, dtype=torch.long)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    torch.cumsum(counts, 0, out=cu[1:])
    # output_size: the size is known on the host, so nothing is read back from a tensor.
    starts = torch.repeat_interleave(
        cu.narrow(0, 0, len(lengths)).long(), counts, output_size=len(flat)
    )
    positions = torch.arange(len(flat), dtype=torch.long) - starts
    return PackedBatch(
        input_ids=ids.to(device, non_blocking=True),
        position_ids=positions.to(device, non_blocking=True),
        cu_seqlens=cu.to(device, non_blocking=True),
        lengths=lengths,
        max_seqlen=max(lengths),
    )
