"""``CalibratedScorer``: a scorer whose scores are calibrated probabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rerank_plugins.calibration.file import Calibration, calibration_identity
from rerank_plugins.errors import CalibrationMismatchError, ScoringError
from rerank_plugins.scoring import Score, Scorer, check_scores

__all__ = ["CalibratedScorer", "calibrate_scorer"]


class CalibratedScorer:
    """A scorer whose scores are calibrated probabilities (``kind="probability"``).

    Wraps ``scorer`` (which must give raw scores of ``calibration.mode["raw_kind"]``);
    tokens and truncation flags are kept.
    """

    def __init__(self, scorer: Scorer, calibration: Calibration) -> None:
        self.scorer = scorer
        self.calibration = calibration

    def _map(self, scores: object, n: int) -> list[Score]:
        checked = check_scores(scores, n)
        expected = self.calibration.mode.get("raw_kind")
        wrong = [i for i, s in enumerate(checked) if expected and s.kind != expected]
        if wrong:
            raise ScoringError(
                f"the calibration is for {expected} scores, the scorer gave "
                f"{checked[wrong[0]].kind}",
                indices=wrong,
            )
        return [
            Score(self.calibration.probability(s.value), "probability", s.tokens, s.truncated)
            for s in checked
        ]

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        return self._map(self.scorer.score(query, documents), len(documents))

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        return self._map(await self.scorer.ascore(query, documents), len(documents))

    def __repr__(self) -> str:
        c = self.calibration
        return f"CalibratedScorer({self.scorer!r}, a={c.a:.4g}, b={c.b:.4g})"


def calibrate_scorer(
    scorer: Scorer,
    calibration: Calibration,
    *,
    options: Mapping[str, Any] | None = None,
) -> CalibratedScorer:
    """``scorer`` wrapped by ``calibration``, after checking that the file was made for
    this model and mode (:class:`CalibrationMismatchError` naming the difference)."""
    model, mode = calibration_identity(scorer, options)
    recorded_mode = {k: v for k, v in calibration.mode.items() if k != "raw_kind"}
    if model != calibration.model:
        raise CalibrationMismatchError(
            f"the calibration file was made for model {calibration.model}, not {model}"
        )
    if mode != recorded_mode:
        differ = sorted(
            k for k in set(mode) | set(recorded_mode) if mode.get(k) != recorded_mode.get(k)
        )
        raise CalibrationMismatchError(
            f"the calibration file was made for another mode: {differ} differ "
            f"(file: {recorded_mode}, scorer: {mode})"
        )
    return CalibratedScorer(scorer, calibration)
