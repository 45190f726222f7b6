"""Finding and reading checkpoints in the Hugging Face layout.

A spec is a local directory or a hub id (``org/name``). Only safe formats are read:
``config.json`` and friends, ``*.safetensors`` and tokenizer files; the one ``.pt`` file
we know of (mmBERT's heads) goes through ``torch.load(weights_only=True)`` elsewhere.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import SecretStr

from rerank_plugins._imports import require
from rerank_plugins.errors import (
    CheckpointError,
    ModelLoadError,
    RerankError,
    UnsupportedModelError,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = [
    "HUB_OPTIONS",
    "checkpoint_errors",
    "config_float",
    "config_int",
    "guard_checkpoint_init",
    "link_root",
    "load_state_dict",
    "load_tokenizer",
    "read_json",
    "remote_code_file",
    "resolve_checkpoint",
    "shard_files",
]

_CACHE_REPO_PREFIXES = ("models--", "datasets--", "spaces--")

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
        "then set HF_HUB_OFFLINE=1 so that only the cache is read; or, to try the package "
        "here, build a tiny random-weight checkpoint: python -m rerank_plugins.testing DIR"
    )


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; a missing, unreadable or malformed file is a
    :class:`CheckpointError` naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is missing", path=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text: {exc}", path=str(path)) from exc
    except OSError as exc:  # a directory, no permission, ...
        raise CheckpointError(f"{path} cannot be read: {exc}", path=str(path)) from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, nesting too deep
        raise CheckpointError(f"{path} is not valid JSON: {exc}", path=str(path)) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object", path=str(path))
    return data


def shard_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those the index names, else ``*.safetensors``.

    Every shard must be named inside ``directory`` (an index naming ``../x`` or an absolute
    path is refused) and resolve inside it, links followed; in a Hugging Face cache
    snapshot (``models--org--name/snapshots/<rev>/``, whose files link to
    ``../../blobs/<hash>``) they may resolve anywhere in that repo folder, not further.
    """
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(
            f"{index} has no weight_map of tensor names to file names", path=str(index)
        )
    root = link_root(directory)
    files = []
    for name in sorted(set(weight_map.values())):
        named = PurePath(name)
        path = (directory / name).resolve()
        if (
            named.is_absolute()
            or ".." in named.parts
            or not path.is_relative_to(root)
            or path == root
        ):
            raise CheckpointError(
                f"{index} names a shard outside the checkpoint directory: {name!r}",
                path=str(index),
            )
        if not path.is_file():
            raise CheckpointError(
                f"{index} names shard {name!r}, which is missing", path=str(directory / name)
            )
        files.append(path)
    return files


def link_root(directory: Path) -> Path:
    """Where a checkpoint's files may resolve to: the directory itself, or for a Hugging
    Face cache snapshot the repo folder holding its ``blobs/`` (``models--org--name/``)."""
    real = directory.resolve()
    repo = real.parent.parent
    if real.parent.name == "snapshots" and repo.name.startswith(_CACHE_REPO_PREFIXES):
        return repo
    return real


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a (possibly sharded) safetensors checkpoint on the CPU."""
    st = require("safetensors.torch")
    files = shard_files(directory)
    if not files:
        raise UnsupportedModelError(
            f"{directory} holds no *.safetensors weights (pickled weights are not loaded)"
        )
    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            state.update(st.load_file(str(path), device="cpu"))
        except Exception as exc:  # SafetensorError (truncated header, bad offsets), OSError
            raise CheckpointError(
                f"{path} is not a readable safetensors file: {exc}", path=str(path)
            ) from exc
    return state


def remote_code_file(directory: Path) -> Path | None:
    """The file that asks for the checkpoint's own Python code (an ``auto_map``), if any.

    Such code is never run: transformers would import the ``.py`` files beside it.
    """
    for name in ("tokenizer_config.json", "config.json"):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            continue  # read_json reports it when the file is actually needed
        if isinstance(data, dict) and data.get("auto_map"):
            return path
    return None


def load_tokenizer(directory: Path) -> Tokenizer:
    """Load the checkpoint's fast tokenizer with any baked-in truncation and padding off."""
    tokenizers = require("tokenizers")
    file = directory / "tokenizer.json"
    if file.is_file():
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust library raises a bare Exception
            raise CheckpointError(
                f"{file} is not a usable tokenizer: {exc}", path=str(file)
            ) from exc
    else:  # older checkpoints ship vocab.txt / sentencepiece files: let transformers convert
        code = remote_code_file(directory)
        if code is not None:
            raise CheckpointError(
                f"{directory} has no tokenizer.json and {code.name} asks for the checkpoint's "
                "own code (auto_map), which is never run; add a tokenizer.json",
                path=str(code),
            )
        transformers = require("transformers")
        try:
            fast = transformers.AutoTokenizer.from_pretrained(
                str(directory), trust_remote_code=False, local_files_only=True
            )
        except Exception as exc:
            raise CheckpointError(
                f"no usable tokenizer in {directory}: {exc}", path=str(directory)
            ) from exc
        tokenizer = getattr(fast, "backend_tokenizer", None)
        if tokenizer is None:
            raise UnsupportedModelError(f"{directory} has no fast tokenizer")
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


_Init = TypeVar("_Init", bound=Callable[..., None])


def guard_checkpoint_init(init: _Init) -> _Init:
    """Decorate a scorer's ``__init__(self, model, ...)``: whatever a hostile checkpoint
    makes the loading code raise comes out as a :class:`CheckpointError` naming it
    (wrong arguments still raise ``TypeError``: they are bound before the guard)."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        values = list(bound.arguments.values())
        model = values[1] if len(values) > 1 else ""
        with checkpoint_errors(Path(str(model))):
            init(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextmanager
def checkpoint_errors(directory: Path) -> Iterator[None]:
    """Turn any failure while building a model from ``directory`` into a
    :class:`CheckpointError`: hostile files must not escape as ``KeyError``,
    ``ZeroDivisionError``, ``RuntimeError``, ... (a backstop behind the checks that
    name the file)."""
    try:
        yield
    except RerankError:
        raise
    except (
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        ArithmeticError,
        RuntimeError,
        RecursionError,
        AttributeError,
    ) as exc:
        raise CheckpointError(
            f"{directory} is not a loadable checkpoint ({type(exc).__name__}: {exc})",
            path=str(directory),
        ) from exc


def config_int(config: Mapping[str, Any], key: str, default: int, *, minimum: int = 1) -> int:
    """``config[key]`` (or ``default``) as an int of at least ``minimum``.

    Checked before anything is allocated: a string, a bool, a float or a value below
    ``minimum`` (``num_attention_heads: 0``, ``local_attention: -4``) is a
    :class:`CheckpointError`.

    >>> config_int({"hidden_size": 64}, "hidden_size", 768)
    64
    """
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointError(
            f"config.json: {key} must be an integer >= {minimum}, got {value!r}",
            path="config.json",
        )
    return value


def config_float(config: Mapping[str, Any], key: str, default: float) -> float:
    """``config[key]`` (or ``default``) as a finite positive float."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise CheckpointError(
            f"config.json: {key} must be a positive number, got {value!r}", path="config.json"
        )
    return float(value)
