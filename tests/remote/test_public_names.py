"""The remote package's public names keep their import paths after the split by job."""

from __future__ import annotations

import httpx

import rerank_plugins
from rerank_plugins import remote, wire
from rerank_plugins.remote import config, scorer


def test_the_scorer_and_its_defaults_keep_their_paths() -> None:
    assert scorer.RemoteScorer is remote.RemoteScorer is rerank_plugins.RemoteScorer
    assert remote.RemoteScorer.__module__ == "rerank_plugins.remote.scorer"
    assert scorer.DEFAULT_TIMEOUT is remote.DEFAULT_TIMEOUT is config.DEFAULT_TIMEOUT
    assert isinstance(remote.DEFAULT_TIMEOUT, httpx.Timeout)
    assert scorer.DEFAULT_DEADLINE == remote.DEFAULT_DEADLINE == 900.0
    assert scorer.API_KEY_ENV is remote.API_KEY_ENV is wire.API_KEY_ENV
    assert set(scorer.__all__) == {
        "API_KEY_ENV",
        "DEFAULT_DEADLINE",
        "DEFAULT_TIMEOUT",
        "RemoteScorer",
    }
