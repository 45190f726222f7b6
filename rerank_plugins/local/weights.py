"""A process-wide cache of loaded models, so scorers on the same checkpoint share one copy.

Creating ``RerankCompressor(model=X)`` per request is common in LangChain and LlamaIndex
code; without sharing, every instance loads (and holds) the weights again. Entries are
keyed by (resolved checkpoint, device, dtype, engine and its options) and held through
weak references: the weights are freed when the last scorer using them goes.
Models are only read after loading (inference mode), so sharing them is safe.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["checkpoint_key", "loaded_count", "shared_weights"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_loaded: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
_locks: dict[Hashable, threading.Lock] = {}
_guard = threading.Lock()


def checkpoint_key(directory: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """Identify a checkpoint by its real path and the size and mtime of its files.

    A directory rewritten in place (a fine-tune saved over the old one) gets a new key.
    """
    real = Path(directory).resolve()
    stamps = tuple(
        sorted(
            (p.name, st.st_size, st.st_mtime_ns)
            for p in real.iterdir()
            if p.is_file() and (st := p.stat())
        )
    )
    return str(real), stamps


def shared_weights(key: Hashable, load: Callable[[], T], *, cache: bool = True) -> T:
    """The object ``load()`` builds for ``key``, shared with every other live user of ``key``.

    ``cache=False`` always loads a private copy. ``load`` must return an object that
    supports weak references (any ordinary class instance).
    """
    if not cache:
        return load()
    with _guard:
        found = _loaded.get(key)
        if found is not None:
            return found
        lock = _locks.setdefault(key, threading.Lock())
    with lock:  # one load per key even when several threads ask at once
        found = _loaded.get(key)
        if found is not None:
            return found
        value = load()
        with _guard:
            _loaded[key] = value
            _locks.pop(key, None)
        logger.debug("loaded weights for %s", key)
        return value


def loaded_count() -> int:
    """How many distinct loaded models are alive in the cache (for tests and diagnostics)."""
    return len(_loaded)
