"""``load_scorer``: one entry point from a model spec or an endpoint URL to a scorer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rerank_plugins.errors import InvalidInputError, UnknownOptionError
from rerank_plugins.scoring import Scorer

__all__ = [
    "DEFAULT_MODEL",
    "in_user_words",
    "is_remote",
    "load_model",
    "load_scorer",
    "scorer_from",
]

DEFAULT_MODEL = "Alibaba-NLP/gte-reranker-modernbert-base"
"""The model the command line and the adapters use when none is given."""


def is_remote(spec: str | Path) -> bool:
    """Whether ``spec`` names an endpoint (an ``http://`` or ``https://`` URL)."""
    return str(spec).startswith(("http://", "https://"))


def load_scorer(
    spec: str | Path,
    *,
    calibration: str | Path | None = None,
    batching: bool = False,
    **options: Any,
) -> Scorer:
    """Build a scorer from a hub id, a local checkpoint directory or an endpoint URL.

    ``http://`` and ``https://`` URLs give a :class:`~rerank_plugins.remote.RemoteScorer`;
    anything else is resolved to a checkpoint whose own files pick the local scorer.
    ``options`` go to the scorer's constructor (``device``, ``max_length``, ``overflow``,
    ``api_key``, ``dialect``, ...; ``threads`` sets a local model's intra-op threads).

    ``calibration``: a file written by ``rerank-plugins calibrate`` for this model and
    mode; the scorer then returns calibrated probabilities (``kind="probability"``), so
    that 0.5 means "more likely relevant than not". A file made for another model or mode
    raises :class:`~rerank_plugins.errors.CalibrationMismatchError`.

    ``batching=True`` wraps the scorer in a :class:`~rerank_plugins.batching.BatchingScorer`:
    concurrent calls (threads, event loops) share forwards through the server's batcher.
    """
    if calibration is not None:
        from rerank_plugins.calibration import calibrate_scorer, load_calibration

        cal = load_calibration(calibration)
        cal.check_kind(remote=is_remote(spec))
        merged = {**cal.options, **options}
        scorer: Scorer = calibrate_scorer(_load(spec, merged), cal, options=merged)
    else:
        scorer = _load(spec, options)
    if batching:
        from rerank_plugins.batching import BatchingScorer

        return BatchingScorer(scorer)
    return scorer


def _load(spec: str | Path, options: dict[str, Any]) -> Scorer:
    if is_remote(spec):
        from rerank_plugins.remote import RemoteScorer

        return RemoteScorer(str(spec), **options)
    from rerank_plugins.local import load_local_scorer

    return load_local_scorer(spec, **options)


def in_user_words(exc: UnknownOptionError, spec: str | Path, options: Any) -> InvalidInputError:
    """``exc`` (an option the loaded scorer does not take), said the way the command line
    says it when the option belongs to another kind of model (``--layer`` for a plain
    cross-encoder); else ``exc`` itself."""
    for name in ("layer", "dim"):
        if name in options and f"no option {name!r}" in str(exc):
            return InvalidInputError(
                f"--{name} only applies to matryoshka models ({spec} is not one)"
            )
    return exc


def scorer_from(
    scorer: Scorer | None, model: str | Path | None, model_kwargs: dict[str, Any] | None
) -> Scorer:
    """The scorer an adapter should use: the one given, else ``load_scorer(model)``.

    With neither, the default model (:data:`rerank_plugins.DEFAULT_MODEL`) is loaded.
    """
    if scorer is not None:
        if model is not None or model_kwargs:
            raise InvalidInputError("pass either scorer= or model= (with model_kwargs), not both")
        if not isinstance(scorer, Scorer):
            raise InvalidInputError(
                f"scorer must implement score() and ascore(), got {type(scorer).__name__}"
            )
        return scorer
    if model is None:
        model = DEFAULT_MODEL
    return load_scorer(model, **(model_kwargs or {}))


def load_model(
    model: str | Path,
    options: Mapping[str, Any],
    *,
    load: Callable[..., Scorer] = load_scorer,
) -> Scorer:
    """The scorer of ``model`` with ``options`` (``load_scorer`` options): with a
    ``cascade`` option (a second model's spec) and ``keep``, a
    :class:`~rerank_plugins.cascade.scorer.Cascade` of ``model`` and that second model,
    which gets the same options but the matryoshka exit ones and ``calibration`` (only
    ``overflow`` and ``instruction`` when it is of the other kind, local or remote).
    ``load`` loads one model
    (``load_scorer``). The command line, ``serve`` and ``score`` build their scorer with it.
    """

    from rerank_plugins.cascade import Cascade

    options = dict(options)
    second = options.pop("cascade", None)
    if second is None:
        return load(model, **options)
    keep = options.pop("keep")
    # A calibration file belongs to the first model (its checkpoint and mode).
    rest = {k: v for k, v in options.items() if k not in ("layer", "dim", "calibration")}
    if is_remote(second) != is_remote(model):  # the kinds take different options
        rest = {k: v for k, v in rest.items() if k in ("overflow", "instruction")}
    return Cascade(load(model, **options), load(second, **rest), keep=keep)
