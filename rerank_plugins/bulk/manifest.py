"""The ``_manifest.json`` of a bulk scoring output: what made it, and every shard's checksum.

A resume must continue *the same* run: the manifest records what changes the rows (the
input's content, the scorer's identity, the shard size, the columns, the output options)
and a resume with any of it changed raises :class:`ResumeConflictError` naming each
difference. Spellings do not count: the input is known by its content
(:func:`~rerank_plugins.identity.file_digest`: whole-file SHA-256 up to
:data:`INPUT_FULL_HASH_BYTES`, else size + sampled blocks), the model by
:func:`~rerank_plugins.identity.scorer_identity` (a checkpoint's fingerprint, not its path;
an endpoint's URL without credentials). Paths and the model spec as typed are kept under
``"recorded"`` for people, never compared.

``"shards"`` holds, per finished shard, the SHA-256 and size of the shard file and of its
errors file, with its rows, error rows and tokens; a resume keeps only shards that match
(others are recomputed, and the summary says which). ``"runs"`` lists each run's time.
No secret is written: URLs lose their user info and query, key options are left out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rerank_plugins.errors import InvalidInputError, ResumeConflictError
from rerank_plugins.identity import file_digest, redact_url

__all__ = [
    "INPUT_FULL_HASH_BYTES",
    "MANIFEST",
    "Manifest",
    "ShardRecord",
    "input_identity",
    "sha256_file",
]

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
VERSION = 2
INPUT_FULL_HASH_BYTES = 256 * 2**20
"""Inputs up to this size are hashed whole on every run and resume; larger ones sampled."""

_SECRET_OPTIONS = frozenset(
    {"api_key", "token", "api_key_env", "headers", "client", "async_client", "extra_body"}
)
_INFO = "recorded"  # for people; never compared
_MUTABLE = ("shards", "runs", _INFO)

ShardRecord = dict[str, Any]
"""``{"file", "sha256", "bytes", "rows", "errors", "tokens", "errors_sha256"}``."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_identity(path: Path) -> dict[str, Any]:
    """The input's size and content digest (not its path or mtime: a copy is the same input)."""
    try:
        size = path.stat().st_size
        digest = file_digest(path, full_bytes=INPUT_FULL_HASH_BYTES)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    return {"input_size": size, "input_digest": digest}


def public_options(options: Mapping[str, Any] | None) -> dict[str, str]:
    """Model options fit for a plain file: no key, token, header or client; URLs redacted."""
    return {
        k: redact_url(repr(v)) if "://" in repr(v) else repr(v)
        for k, v in sorted((options or {}).items())
        if k not in _SECRET_OPTIONS
    }


def _differences(previous: Any, current: Any, prefix: str) -> list[str]:
    """Dotted names of what differs (a fingerprint's ``files`` named one by one)."""
    if isinstance(previous, dict) and isinstance(current, dict):
        names: list[str] = []
        for key in sorted(set(previous) | set(current)):
            if key == "checkpoint":  # the resolved path: a spelling, never compared
                continue
            names += _differences(previous.get(key), current.get(key), f"{prefix}.{key}")
        return names
    return [] if previous == current else [prefix]


class Manifest:
    """The manifest of one output directory: the run's identity, shards and runs."""

    def __init__(self, out: Path, identity: dict[str, Any]) -> None:
        self.out = out
        self.path = out / MANIFEST
        self.data: dict[str, Any] = {"version": VERSION, **identity, "shards": {}, "runs": []}
        self._run: dict[str, Any] = {"started": time.time(), "seconds": 0.0, "shards": 0}

    def create(self) -> None:
        self.data["runs"].append(self._run)
        self._write()

    def resume(self) -> None:
        """Check the manifest on disk against this run's identity and adopt its shards;
        raise :class:`ResumeConflictError` naming every difference."""
        previous = self.check()
        shards = previous.get("shards")
        runs = previous.get("runs")
        self.data["shards"] = shards if isinstance(shards, dict) else {}
        self.data["runs"] = [*(runs if isinstance(runs, list) else []), self._run]
        self.data[_INFO] = {**previous.get(_INFO, {}), **self.data.get(_INFO, {})}
        self._write()

    def check(self, *, only_known: bool = False) -> dict[str, Any]:
        """The manifest on disk, checked against this run's identity (``only_known``: the
        keys this run knows yet, so that a changed input is refused before a model loads)."""
        try:
            previous = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InvalidInputError(
                f"{self.out} has no {MANIFEST}: it is not a bulk scoring output"
            ) from exc
        except (OSError, ValueError, RecursionError) as exc:
            raise InvalidInputError(f"{self.path} is unreadable: {exc}") from exc
        if not isinstance(previous, dict):
            raise InvalidInputError(f"{self.path} does not hold a JSON object")
        changed: list[str] = []
        keys = set(self.data) if only_known else set(previous) | set(self.data)
        for key in sorted(keys - set(_MUTABLE)):
            changed += _differences(previous.get(key), self.data.get(key), key)
        if changed:
            details = "; ".join(
                f"{name}: was {_at(previous, name)!r}, now {_at(self.data, name)!r}"
                for name in changed[:8]
            )
            raise ResumeConflictError(
                f"cannot resume {self.out}: {', '.join(changed)} changed since that run "
                f"({details}); rerun into a new output",
                changed=changed,
            )
        return previous

    def shard(self, index: int) -> ShardRecord | None:
        record = self.data["shards"].get(str(index))
        return record if isinstance(record, dict) else None

    def verify(self, index: int, errors_path: Path) -> str | None:
        """Why shard ``index`` cannot be kept (``None``: its files match the manifest)."""
        record = self.shard(index)
        if record is None:
            return "it has no checksum in the manifest (the run stopped before recording it)"
        path = self.out / str(record.get("file"))
        if not path.is_file():
            return "it is missing"
        if path.stat().st_size != record.get("bytes") or sha256_file(path) != record.get("sha256"):
            return "its content differs from the checksum recorded when it was written"
        expected = record.get("errors_sha256")
        if expected is None:
            return f"{errors_path.name} should not exist" if errors_path.exists() else None
        if not errors_path.is_file() or sha256_file(errors_path) != expected:
            return f"its errors file {errors_path.name} differs from the recorded checksum"
        return None

    def forget(self, index: int) -> None:
        self.data["shards"].pop(str(index), None)

    def record(
        self, index: int, path: Path, name: str, errors_path: Path, counts: Mapping[str, int]
    ) -> None:
        """Record shard ``index``, written to ``path`` and about to be renamed to ``name``."""
        self.data["shards"][str(index)] = {
            "file": name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "errors_sha256": sha256_file(errors_path) if errors_path.exists() else None,
            **counts,
        }
        self._run["shards"] += 1
        self._write()

    def finish_run(self, seconds: float) -> None:
        self._run["seconds"] = round(seconds, 3)
        self._write()

    def totals(self) -> dict[str, int]:
        records = list(self.data["shards"].values())
        return {k: sum(int(r.get(k, 0)) for r in records) for k in ("rows", "errors", "tokens")}

    @property
    def runs(self) -> list[dict[str, Any]]:
        return list(self.data["runs"])

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def _at(data: Mapping[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    return value
