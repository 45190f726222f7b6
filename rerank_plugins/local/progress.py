"""Feedback on long scoring jobs: a tqdm bar (opt-in) and INFO logs of throughput.

The bar is off unless asked for (``show_progress=True``, or ``None`` = "auto": on when
standard error is a terminal and the call takes more than :data:`FEW_BATCHES` batches, what
the command line uses). Inside the adapters it stays off: a library must not draw on a
terminal it does not own. The throughput line is logged at INFO level on every call that
takes more than one batch, so ``-v`` on the command line shows it.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

from rerank_plugins._imports import require

__all__ = ["FEW_BATCHES", "BatchProgress", "check_show_progress"]

logger = logging.getLogger(__name__)

FEW_BATCHES = 3
"""In "auto" mode, a call of at most this many batches shows no bar."""


def check_show_progress(value: object) -> bool | None:
    """Validate a ``show_progress`` option: ``True``, ``False`` or ``None`` ("auto")."""
    from rerank_plugins.errors import InvalidInputError

    if value is not None and not isinstance(value, bool):
        raise InvalidInputError(f"show_progress must be True, False or None (auto), got {value!r}")
    return value


class BatchProgress:
    """Counts batches and tokens of one scoring call; draws a bar when asked.

    ``with BatchProgress(batches=n, tokens=t, show=...) as p: ... p.update(tokens)``.
    """

    def __init__(self, *, batches: int, tokens: int, show: bool | None, desc: str) -> None:
        self.batches = batches
        self.tokens = tokens
        self.desc = desc
        if show is None:
            show = batches > FEW_BATCHES and sys.stderr.isatty()
        self._bar: Any = None
        if show:
            tqdm = require("tqdm")
            self._bar = tqdm.tqdm(total=tokens, desc=desc, unit="tok", unit_scale=True, leave=False)
        self._start = 0.0
        self._done_batches = 0
        self._done_tokens = 0

    def __enter__(self) -> BatchProgress:
        self._start = time.perf_counter()
        return self

    def update(self, tokens: int) -> None:
        self._done_batches += 1
        self._done_tokens += tokens
        if self._bar is not None:
            self._bar.update(tokens)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        if exc_type is None and self._done_batches > 1:
            logger.info(
                "%s: %d batches, %d tokens in %.2f s (%.2f batches/s, %.0f tokens/s)",
                self.desc,
                self._done_batches,
                self._done_tokens,
                elapsed,
                self._done_batches / elapsed,
                self._done_tokens / elapsed,
            )
