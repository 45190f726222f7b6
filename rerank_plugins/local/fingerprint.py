"""A checkpoint's fingerprint: which model this is, whatever path spelled it.

Two spellings of one checkpoint (relative or absolute, through a symlink, a hub id or the
cache's snapshot folder it resolves to, a copy elsewhere) give the same fingerprint; an
edited config, tokenizer or weight file gives another. Every file under the
directory (links followed) counts by :func:`rerank_plugins.identity.file_digest`: configs and
tokenizers by their whole content, weight files by their size, their safetensors header
(every tensor's name, dtype, shape and offsets) and sampled blocks; a fine-tuned model
differs in nearly every block. This reads about 1 MiB per weight file, not gigabytes, so a
resume does not re-read the model; an edit confined to bytes no sample touches is not
seen (stated, accepted).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from rerank_plugins.identity import file_digest

__all__ = ["checkpoint_fingerprint", "local_identity"]


def checkpoint_fingerprint(directory: Path) -> dict[str, Any]:
    """``{"checkpoint": resolved dir, "sha256": one digest, "files": {name: digest}}``.

    ``files`` names each file relative to the directory (so a comparison can say which
    file changed); ``sha256`` covers them all.
    """
    root = Path(directory).resolve()
    files = {
        str(path.relative_to(root)): file_digest(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    }
    total = hashlib.sha256()
    for name, digest in files.items():
        total.update(f"{name}\0{digest}\n".encode())
    return {"checkpoint": str(root), "sha256": total.hexdigest(), "files": files}


def local_identity(kind: str, directory: Path, options: dict[str, Any]) -> dict[str, Any]:
    """A local scorer's ``identity()``: its kind, its checkpoint's fingerprint and the
    options (resolved values, as strings) that change its scores."""
    return {
        "kind": kind,
        **checkpoint_fingerprint(directory),
        "options": {k: str(v) for k, v in sorted(options.items())},
    }
