"""Calibrated scores: a Platt-scaling file and the scorer wrapper that applies it.

A calibration maps a scorer's raw score ``s`` (a logit, a MaxSim sum, an endpoint's
score) to ``P(relevant) = sigmoid(a * s + b)``, fitted by ``rerank-plugins calibrate``
(:mod:`rerank_plugins.evaluation.calibration`). With it, ``score_threshold=0.5`` means
"more likely relevant than not" whatever the backend.

- :mod:`~rerank_plugins.calibration.file`: :class:`Calibration` (the JSON file, which
  records the model and the mode it was fitted for) and :func:`calibration_identity`;
- :mod:`~rerank_plugins.calibration.scorer`: :class:`CalibratedScorer` and
  :func:`calibrate_scorer`, which refuses a file made for another model or mode with
  :class:`~rerank_plugins.errors.CalibrationMismatchError`.

Pure Python: it imports no backend, it reads the scorer's attributes.
"""

from __future__ import annotations

from rerank_plugins.calibration.file import (
    FORMAT,
    Calibration,
    calibration_identity,
    load_calibration,
)
from rerank_plugins.calibration.scorer import CalibratedScorer, calibrate_scorer

__all__ = [
    "FORMAT",
    "CalibratedScorer",
    "Calibration",
    "calibrate_scorer",
    "calibration_identity",
    "load_calibration",
]
