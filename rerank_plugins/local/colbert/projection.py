"""The projection after the trunk: PyLate's ``Dense`` modules (``1_Dense/``...) as listed
in ``modules.json``, loaded from safetensors only."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins.errors import UnsupportedModelError
from rerank_plugins.local.checkpoint import read_json

__all__ = ["DenseProjection", "build_dense", "load_projection"]

logger = logging.getLogger(__name__)

_DENSE_TYPES = frozenset(
    {
        "pylate.models.Dense.Dense",
        "pylate.models.Dense",
        "sentence_transformers.models.Dense",
        "sentence_transformers.models.Dense.Dense",
    }
)
# Activations by the names sentence-transformers writes (never imported by name).
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.ReLU": F.relu,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
    "torch.nn.modules.activation.SiLU": F.silu,
}


def _read_modules(directory: Path) -> list[dict[str, Any]]:
    path = directory / "modules.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise UnsupportedModelError(f"{path} is not a list of modules")
    return sorted(data, key=lambda e: int(e.get("idx", 0)))


class DenseProjection(nn.Module):
    """PyLate's ``Dense``: ``activation(linear(x))`` (+ ``residual(x)`` or ``x`` when the
    config asks for a residual). ``x [T, in]`` → ``[T, out]``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.in_features = int(config["in_features"])
        self.out_features = int(config["out_features"])
        name = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
        if name not in _ACTIVATIONS:
            raise UnsupportedModelError(
                f"Dense activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        self.activation_name = name
        self._act = _ACTIVATIONS[name]
        self.linear = nn.Linear(self.in_features, self.out_features, bias=bool(config.get("bias")))
        self.use_residual = bool(config.get("use_residual", False))
        self.residual: nn.Linear | None = None
        if self.use_residual and self.in_features != self.out_features:
            self.residual = nn.Linear(self.in_features, self.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._act(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


def load_projection(directory: Path, *, device: torch.device) -> nn.Sequential:
    """The chain of Dense modules that ``modules.json`` lists after the root Transformer,
    in fp32 on ``device``. Other module types are skipped, as PyLate skips them."""
    from rerank_plugins._imports import require

    st = require("safetensors.torch")
    entries = _read_modules(directory)
    if not entries or entries[0].get("path", "") not in ("", "."):
        raise UnsupportedModelError(
            f"{directory}/modules.json does not start with the Transformer at the root"
        )
    layers: list[nn.Module] = []
    for entry in entries[1:]:
        kind = str(entry.get("type", ""))
        if kind not in _DENSE_TYPES:
            logger.warning("skipping module %r (%s): PyLate keeps only Dense modules", entry, kind)
            continue
        folder = directory / str(entry.get("path", ""))
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise UnsupportedModelError(
                f"{folder} has no model.safetensors (pickled weights are not loaded)"
            )
        state = st.load_file(str(weights), device="cpu")
        try:
            dense = build_dense(read_json(folder / "config.json"), state, device=device)
        except RuntimeError as exc:
            raise UnsupportedModelError(f"{weights} does not match its config.json: {exc}") from exc
        layers.append(dense)
    if not layers:
        raise UnsupportedModelError(f"{directory}/modules.json lists no Dense projection")
    return nn.Sequential(*layers).eval()


def build_dense(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, device: torch.device
) -> DenseProjection:
    """A fp32 :class:`DenseProjection` on ``device`` from its config and state dict (the
    tensors move first, then the ``meta``-built module takes them over)."""
    with torch.device("meta"):
        dense = DenseProjection(config)
    placed = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
    dense.load_state_dict(placed, strict=True, assign=True)
    return dense
