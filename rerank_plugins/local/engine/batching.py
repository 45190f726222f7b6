"""Token-budget batching: length-sorted groups of sequences under a token budget.

Pure functions, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["token_budget_batches"]


def token_budget_batches(
    lengths: Sequence[int], *, max_tokens: int, padded: bool, max_batch: int | None = None
) -> list[list[int]]:
    """Group sequence indices into batches whose cost stays within ``max_tokens``.

    Sequences are taken longest first, so each batch holds sequences of similar length.
    The cost of a batch is ``len(batch) * longest`` when ``padded`` (the padded tensor the
    model will see) and ``sum(lengths)`` otherwise (packed execution). A single sequence
    longer than the budget gets a batch of its own. ``max_batch`` caps the number of
    sequences per batch. Returns lists of indices into ``lengths``; every index appears
    exactly once.

    >>> token_budget_batches([5, 1, 3, 9], max_tokens=10, padded=False)
    [[3], [0, 2, 1]]
    >>> token_budget_batches([5, 1, 3, 9], max_tokens=10, padded=True)
    [[3], [0, 2], [1]]
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    longest = 0
    for i in order:
        n = lengths[i]
        if current:
            cost = (len(current) + 1) * max(longest, n) if padded else total + n
            full = max_batch is not None and len(current) >= max_batch
            if cost > max_tokens or full:
                batches.append(current)
                current, total, longest = [], 0, 0
        current.append(i)
        total += n
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
