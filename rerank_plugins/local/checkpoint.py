"""Finding and reading checkpoints in the Hugging Face layout.

A spec is a local directory or a hub id (``org/name``). Only safe formats are read:
``config.json`` and friends, ``*.safetensors`` and tokenizer files; the one ``.pt`` file
we know of (mmBERT's heads) goes through ``torch.load(weights_only=True)`` elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from rerank_plugins._imports import require
from rerank_plugins.errors import ModelLoadError, UnsupportedModelError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "HUB_OPTIONS",
    "load_state_dict",
    "load_tokenizer",
    "read_json",
    "resolve_checkpoint",
]

HUB_OPTIONS = ("revision", "cache_dir", "local_files_only", "token")
"""Options that only reach the hub download (``snapshot_download``), never the model."""

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
    token: str | SecretStr | None = None,
) -> Path:
    """Return a local directory holding the checkpoint ``spec``.

    A directory is used as it is; anything else is treated as a hub id and fetched (or
    found in the cache) by ``huggingface_hub.snapshot_download``, which only fetches the
    files a scorer reads (never pickled weights). ``token`` (default: ``$HF_TOKEN`` or the
    stored login) is for gated and private models and is used for this download only.
    Raises :class:`ModelLoadError` when the files cannot be obtained.
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
    secret = token.get_secret_value() if isinstance(token, SecretStr) else token
    try:
        local = hub.snapshot_download(
            name,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            local_files_only=local_files_only,
            token=secret,
            allow_patterns=_ALLOW_PATTERNS,
        )
    except Exception as exc:  # the hub raises many types; one message for all of them
        raise ModelLoadError(
            _load_failure(name, exc, revision=revision, cache_dir=cache_dir)
        ) from exc
    return Path(local)


def _load_failure(
    name: str, exc: BaseException, *, revision: str | None, cache_dir: str | Path | None
) -> str:
    """One line: what failed, why (in our words; the hub's error is chained) and the ways out."""
    hub = require("huggingface_hub")
    errors = hub.errors
    cache = str(cache_dir) if cache_dir is not None else str(hub.constants.HF_HUB_CACHE)
    if isinstance(exc, errors.GatedRepoError):
        why = "it is a gated model: accept its terms on the hub and pass token= or set HF_TOKEN"
    elif isinstance(exc, errors.RevisionNotFoundError):
        why = f"it has no revision {revision!r}"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        why = "no such model on the hub (a typo? a private model needs token= or HF_TOKEN)"
    elif hub.constants.HF_HUB_OFFLINE:
        why = f"HF_HUB_OFFLINE is set and it is not in the Hugging Face cache ({cache})"
    elif isinstance(exc, errors.LocalEntryNotFoundError):
        why = f"the hub could not be reached and it is not in the Hugging Face cache ({cache})"
    else:
        why = f"{type(exc).__name__}"
    return (
        f"could not get the files of model {name!r}: {why}. Ways out: pass a local checkpoint "
        f"directory (--model DIR / model=DIR); or warm the Hugging Face cache where the hub "
        f"is reachable (hf download {name}) and copy it here (HF_HOME / cache_dir=); "
        "then set HF_HUB_OFFLINE=1 so that only the cache is read"
    )


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
