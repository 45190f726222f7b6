"""A robust client for the rerank endpoints people run: ``RemoteScorer``.

>>> from rerank_plugins.remote import RemoteScorer
>>> scorer = RemoteScorer("http://127.0.0.1:8000/v1", dialect="tei", api_key_env=None)
>>> scorer.url, scorer.score_kind
('http://127.0.0.1:8000/v1/rerank', 'probability')
"""

from __future__ import annotations

from rerank_plugins.remote.dialects import DIALECTS, DialectName
from rerank_plugins.remote.retry import RetryPolicy
from rerank_plugins.remote.scorer import (
    API_KEY_ENV,
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    RemoteScorer,
)

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "DIALECTS",
    "DialectName",
    "RemoteScorer",
    "RetryPolicy",
]
