"""Sizes claimed by ``config.json``, bounded by the weights actually present.

A 1 KB config can claim a million layers or a 10^12-token window; the weights cannot. The
safetensors headers (names and shapes, read without the tensor data) say what is really
there, and :func:`bounded_config` checks the config against them before a module is built:

- ``num_hidden_layers`` above the layers the weights hold is refused;
- ``hidden_size``, ``intermediate_size`` and ``vocab_size`` above the largest dimension of
  any weight tensor are refused (no real checkpoint has a size that no tensor carries);
- ``max_position_embeddings`` above a learned position table's rows is capped to the
  table (and said); a model with no position table (RoPE: ModernBERT, GTE) is capped at
  :data:`MAX_ROPE_WINDOW` tokens (and said).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rerank_plugins.errors import CheckpointError
from rerank_plugins.local.checkpoint import shard_files

__all__ = ["MAX_ROPE_WINDOW", "bounded_config", "weight_shapes"]

logger = logging.getLogger(__name__)

MAX_ROPE_WINDOW = 131_072
"""The longest window allowed to a model without a learned position table (RoPE): 128K
tokens, four times the longest window of the models we know (32K); attention over more
than this on one document is not what a reranker does."""

_MAX_HEADER = 100 * 2**20  # safetensors' own limit for the JSON header
_LAYER = re.compile(r"(?:^|\.)(?:layers?|blocks?|h)\.(\d+)\.")
_POSITIONS = re.compile(r"(?:^|\.)position_embeddings?\.weight$")
_SIZES = ("hidden_size", "intermediate_size", "vocab_size")


def weight_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors headers only (no tensor data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in shard_files(directory):
        try:
            with path.open("rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if not 2 <= length <= min(_MAX_HEADER, path.stat().st_size - 8):
                    raise ValueError(f"header length {length} does not fit the file")
                header = json.loads(f.read(length))
            for name, entry in header.items():
                if name != "__metadata__":
                    shapes[name] = tuple(int(d) for d in entry["shape"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file: {exc}", path=str(path)
            ) from exc
    return shapes


def bounded_config(directory: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` checked against the weights in ``directory`` (see the module docstring);
    a copy, with ``max_position_embeddings`` capped where needed."""
    out = dict(config)
    shapes = weight_shapes(directory)
    if not shapes:  # no safetensors weights: the loader says so
        return out
    layers = {int(m.group(1)) for name in shapes if (m := _LAYER.search(name))}
    claimed = out.get("num_hidden_layers")
    if layers and isinstance(claimed, int) and claimed > max(layers) + 1:
        raise CheckpointError(
            f"config.json: num_hidden_layers is {claimed} but the weights hold "
            f"{max(layers) + 1} layers",
            path="config.json",
        )
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    for key in _SIZES:
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > largest:
            raise CheckpointError(
                f"config.json: {key} is {value} but no weight tensor has a dimension over "
                f"{largest}",
                path="config.json",
            )
    window = out.get("max_position_embeddings")
    if isinstance(window, int) and not isinstance(window, bool):
        tables = [shape[0] for name, shape in shapes.items() if _POSITIONS.search(name)]
        cap = min(tables) if tables else MAX_ROPE_WINDOW
        if window > cap:
            what = "position table has" if tables else "rotary (RoPE) model is capped at"
            logger.warning(
                "%s: config.json claims max_position_embeddings=%d but the %s %d positions; "
                "using %d",
                directory,
                window,
                what,
                cap,
                cap,
            )
            out["max_position_embeddings"] = cap
    return out
