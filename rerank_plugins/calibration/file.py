"""The calibration file: Platt parameters, and the model and mode they were fitted for.

The file (JSON) records the model it was fitted for (a local checkpoint's content
fingerprint, or an endpoint's URL, dialect and model name) and the mode (the options
that change scores: dtype, layer, dim, output, ...; the kind of raw score).
:func:`~rerank_plugins.calibration.calibrate_scorer` compares them with the scorer's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rerank_plugins.errors import CalibrationMismatchError
from rerank_plugins.identity import scorer_identity
from rerank_plugins.scoring import Scorer

__all__ = ["FORMAT", "Calibration", "calibration_identity", "load_calibration"]

FORMAT = "rerank-plugins-calibration/1"

# Options that change how a scorer runs but not the scores it gives (within float error).
_NOT_MODE = frozenset(
    {
        "device",
        "batch_tokens",
        "show_progress",
        "cache",
        "backend",
        "engine",
        "api_key",
        "api_key_env",
        "timeout",
        "max_retries",
        "retries",
        "concurrency",
        "client",
        "async_client",
        "revision",
        "cache_dir",
        "local_files_only",
        "token",
        "overflow",
        "max_batch_size",
        "headers",
        "calibration",
        "deadline",
        "max_response_bytes",
    }
)


@dataclass(frozen=True)
class Calibration:
    """``probability = sigmoid(a * raw + b)`` for one model and mode.

    ``options``: the ``load_scorer`` options that make the scorer give the raw score
    fitted (``{"output": "logit"}`` for local cross-encoders); merged under the caller's.
    ``fit``: how it was fitted (pairs, ECE before/after on the held-out split, ...).
    """

    a: float
    b: float
    model: dict[str, Any]
    mode: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def probability(self, raw: float) -> float:
        z = self.a * raw + self.b
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def check_kind(self, *, remote: bool) -> None:
        """:class:`CalibrationMismatchError` unless the file was made for the same kind of
        model (an endpoint, or a local checkpoint): checked before anything is loaded."""
        made_for_endpoint = "endpoint" in self.model
        if made_for_endpoint != remote:
            made = "an endpoint" if made_for_endpoint else "a local checkpoint"
            raise CalibrationMismatchError(
                f"the calibration file was made for {made} ({self.model}), "
                f"not for {'an endpoint' if remote else 'a local checkpoint'}"
            )

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; :class:`CalibrationMismatchError` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationMismatchError(f"cannot read calibration file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibrationMismatchError(f"{path} is not a calibration file ({FORMAT})")
    try:
        cal = Calibration(
            a=float(data["a"]),
            b=float(data["b"]),
            model=dict(data["model"]),
            mode=dict(data["mode"]),
            options=dict(data.get("options") or {}),
            fit=dict(data.get("fit") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationMismatchError(f"{path} is not a valid calibration file: {exc}") from exc
    if not (math.isfinite(cal.a) and math.isfinite(cal.b)):
        raise CalibrationMismatchError(f"{path}: a and b must be finite numbers")
    return cal


def calibration_identity(
    scorer: Scorer, options: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model, mode)`` of a loaded scorer, as a calibration file records them.

    ``model`` comes from the scorer's own ``identity()`` (:mod:`rerank_plugins.identity`,
    the record bulk manifests use too): ``{"checkpoint": content digest}`` for a local
    scorer — the checkpoint's files, not the path that spelled it, so a file fitted on one
    machine is accepted on another —, ``{"endpoint", "dialect", "model"}`` for a remote
    one (the URL without credentials or query). ``mode``: the score-changing options
    given (``options`` less device, batching, keys, ...), with the scorer's resolved
    ``dtype``/``layer``/``dim``/``output`` where it has them.
    """
    ident = scorer_identity(scorer)
    if "sha256" in ident:
        model: dict[str, Any] = {"checkpoint": ident["sha256"]}
    elif "url" in ident:
        model = {
            "endpoint": ident["url"],
            "dialect": ident.get("dialect"),
            "model": ident.get("model"),
        }
    else:
        raise CalibrationMismatchError(
            f"cannot identify a {type(scorer).__name__} (neither a checkpoint directory nor "
            "an endpoint url): pass identity= to calibrate it"
        )
    mode = {k: v for k, v in sorted((options or {}).items()) if k not in _NOT_MODE}
    quantize = getattr(scorer, "quantize", None)
    dtype = getattr(scorer, "dtype", None)
    if quantize is not None or dtype is not None:
        mode["dtype"] = str(quantize or dtype).removeprefix("torch.")
    for name in ("layer", "dim", "output", "score_kind", "reduce"):
        value = getattr(scorer, name, None)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            mode[name] = value
    return model, _jsonable(mode)


def _jsonable(mode: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(mode), default=str))  # what the file will read back
