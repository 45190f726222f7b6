"""Keep credentials out of log records, httpx's and httpcore's included.

httpx logs every request's full URL at INFO (``HTTP Request: POST http://h/rerank?key=...``)
and httpcore logs connection details at DEBUG; neither knows which parts are secret. Each
live :class:`~rerank_plugins.remote.RemoteScorer` registers its secrets here (API key, URL
password, query values, credential headers) and a filter on those loggers replaces them
with ``***`` before any handler sees the record.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable

__all__ = ["forget", "register", "scrub"]

# The loggers that may print request details. A filter on a logger only sees records
# created by that very logger (not its children), so the children are named one by one.
_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "hpack",
    "rerank_plugins",
    "rerank_plugins.remote",
    "rerank_plugins.remote.config",
    "rerank_plugins.remote.outcome",
    "rerank_plugins.remote.scorer",
    "rerank_plugins.remote.transport",
)
_MIN_SECRET = 4  # shorter values (a page number, "v1") would blank out ordinary words

_secrets: Counter[str] = Counter()
_lock = threading.RLock()  # re-entrant: a finalizer may run (GC) while it is held
_installed = False


def register(secrets: Iterable[str]) -> list[str]:
    """Start hiding ``secrets``; returns the ones registered (give them to :func:`forget`)."""
    kept = [s for s in secrets if len(s) >= _MIN_SECRET]
    with _lock:
        _secrets.update(kept)
        _install()
    return kept


def forget(secrets: Iterable[str]) -> None:
    """Stop hiding ``secrets`` (one registration each)."""
    with _lock:
        _secrets.subtract(secrets)
        for secret in [s for s, n in _secrets.items() if n <= 0]:
            del _secrets[secret]


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first, so a key
    that contains another is hidden whole)."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback's text is rendered later from the exception: render it now, clean.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = scrub(formatted)
            record.exc_info = None
            record.msg = f"{record.msg}\n{record.exc_text}"
            record.exc_text = None
        return True


_FILTER = _ScrubFilter()


def _install() -> None:
    global _installed
    if _installed:
        return
    for name in _LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
    _installed = True
