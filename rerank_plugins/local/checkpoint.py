"""Finding and reading checkpoints in the Hugging Face layout.

A spec is a local directory or a hub id (``org/name``). Only safe formats are read:
``config.json`` and friends, ``*.safetensors`` and tokenizer files; the one ``.pt`` file
we know of (mmBERT's heads) goes through ``torch.load(weights_only=True)`` elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.errors import UnsupportedModelError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = ["load_state_dict", "load_tokenizer", "read_json", "resolve_checkpoint"]

# What we ever read from a repository; weights in pickle formats are never downloaded.
_ALLOW_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "classification_heads.pt",
    "*_Dense/*.json",  # PyLate projection modules (1_Dense/, 2_Dense/, ...)
    "*_Dense/*.safetensors",
]


def resolve_checkpoint(
    spec: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return a local directory holding the checkpoint ``spec``.

    A directory is used as it is; anything else is treated as a hub id and fetched (or
    found in the cache) by ``huggingface_hub.snapshot_download``.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UnsupportedModelError(f"{str(spec)!r} is a file; pass the checkpoint directory")
    name = str(spec)
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise UnsupportedModelError(
            f"{name!r} is neither a local directory nor a hub id of the form 'org/name'"
        )
    hub = require("huggingface_hub")
    try:
        local = hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_files_only=local_files_only,
            allow_patterns=_ALLOW_PATTERNS,
        )
    except Exception as exc:  # the hub raises many types; one message for all of them
        raise UnsupportedModelError(f"could not fetch {name!r} from the hub: {exc}") from exc
    return Path(local)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, with a clear error when it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UnsupportedModelError(f"{path} is missing") from exc
    except json.JSONDecodeError as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UnsupportedModelError(f"{path} does not hold a JSON object")
    return data


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a (possibly sharded) safetensors checkpoint on the CPU."""
    st = require("safetensors.torch")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise UnsupportedModelError(
            f"{directory} holds no *.safetensors weights (pickled weights are not loaded)"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(st.load_file(str(directory / name), device="cpu"))
    return state


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the checkpoint's fast tokenizer with any baked-in truncation and padding off."""
    tokenizers = require("tokenizers")
    file = directory / "tokenizer.json"
    if file.is_file():
        tokenizer = tokenizers.Tokenizer.from_file(str(file))
    else:  # older checkpoints ship vocab.txt / sentencepiece files: let transformers convert
        transformers = require("transformers")
        try:
            fast = transformers.AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:
            raise UnsupportedModelError(f"no usable tokenizer in {directory}: {exc}") from exc
        tokenizer = getattr(fast, "backend_tokenizer", None)
        if tokenizer is None:
            raise UnsupportedModelError(f"{directory} has no fast tokenizer")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
