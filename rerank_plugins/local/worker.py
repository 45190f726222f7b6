"""The worker thread behind every local scorer's ``ascore``."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["LocalWorker"]


class LocalWorker:
    """One worker thread per local scorer, so ``ascore`` never blocks the event loop.

    Forward passes run one at a time (they use every core anyway); the thread starts on
    the first async call.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    async def run(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
