"""The one exception hierarchy of rerank_plugins.

::

    RerankError
    ├── MissingExtraError (also ImportError)   an optional dependency is not installed
    ├── InvalidInputError (also ValueError)    bad query, documents or options
    │   ├── InputTooLongError                  over the window with overflow="error"
    │   ├── ResumeConflictError                a resume with another input, model or options
    │   ├── UnsupportedDeviceError             a device that cannot run the mode asked for
    │   ├── EvaluationDataError                a malformed or inconsistent BEIR/TREC input
    │   └── CalibrationMismatchError           a calibration file made for another model/mode
    ├── UnsupportedModelError (also ValueError) a checkpoint no scorer can run
    │   └── CheckpointError                    an unreadable or inconsistent checkpoint file
    ├── ModelLoadError                         the model's files could not be fetched
    ├── UnknownOptionError (also TypeError)    an option no scorer/adapter has (valid ones named)
    └── ScoringError                           a backend could not score some documents
        ├── InvalidScoreError                  a backend produced NaN (or another non-number)
        └── EndpointError                      a remote endpoint failed
            ├── EndpointStatusError            an HTTP error status (status, body excerpt)
            │   └── EndpointInputTooLongError  refused over-length input (also InputTooLongError)
            ├── EndpointTimeoutError           the request (or the call's deadline) timed out
            ├── EndpointConnectionError        the server could not be reached
            ├── MalformedResponseError         the body is not what the dialect promises
            │   └── ResponseTooLargeError      the body (decoded) is over the size cap

Every error that concerns particular documents carries ``indices``: the positions, in
the caller's input, of the documents it affected.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CalibrationMismatchError",
    "CheckpointError",
    "EndpointConnectionError",
    "EndpointError",
    "EndpointInputTooLongError",
    "EndpointStatusError",
    "EndpointTimeoutError",
    "EvaluationDataError",
    "InputTooLongError",
    "InvalidInputError",
    "InvalidScoreError",
    "MalformedResponseError",
    "MissingExtraError",
    "ModelLoadError",
    "RerankError",
    "ResponseTooLargeError",
    "ResumeConflictError",
    "ScoringError",
    "UnknownOptionError",
    "UnsupportedDeviceError",
    "UnsupportedModelError",
]


class RerankError(Exception):
    """Base class of every error raised by rerank_plugins."""


class MissingExtraError(RerankError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, module: str, extra: str | None) -> None:
        # extra=None: a core dependency is missing (a broken install): reinstall the package.
        package = "rerank-plugins" if extra is None else f"rerank-plugins[{extra}]"
        super().__init__(f"{module!r} is not installed; install it with: pip install '{package}'")
        self.module = module
        self.extra = extra


class InvalidInputError(RerankError, ValueError):
    """The query, the documents or an option is not valid.

    ``indices`` lists the offending documents (empty when the problem is not
    document-specific).
    """

    def __init__(self, message: str, *, indices: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.indices: tuple[int, ...] = tuple(indices)


class InputTooLongError(InvalidInputError):
    """An input exceeds the model's window and the overflow policy is ``"error"``."""


class ResumeConflictError(InvalidInputError):
    """A resumed run differs from the run that wrote the output (input content, model
    fingerprint, scoring options, shard size, ...); the message names each difference."""

    def __init__(self, message: str, *, changed: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.changed: tuple[str, ...] = tuple(changed)


class UnsupportedModelError(RerankError, ValueError):
    """The checkpoint is not one that any scorer can run."""


class ModelLoadError(RerankError):
    """A model's files could not be obtained (hub unreachable, offline, unknown or gated id).

    Not an :class:`UnsupportedModelError`: nothing is known about the model yet. The
    message says what failed and the ways out; the hub's own exception is ``__cause__``.
    """


class UnknownOptionError(InvalidInputError, TypeError):
    """An option that the scorer or adapter does not have; the message lists the valid ones.

    Also a ``TypeError``, what Python raises for an unexpected keyword argument.
    """


class ScoringError(RerankError):
    """A backend failed to score some documents; ``indices`` says which."""

    def __init__(self, message: str, *, indices: Iterable[int] = ()) -> None:
        super().__init__(message)
        self.indices: tuple[int, ...] = tuple(indices)


class InvalidScoreError(ScoringError):
    """A backend returned a score that is not a finite number (NaN)."""


class EndpointError(ScoringError):
    """A remote endpoint failed for the documents in ``indices``."""


class EndpointStatusError(EndpointError):
    """The endpoint answered with an HTTP error status."""

    def __init__(
        self, message: str, *, status_code: int, body: str = "", indices: Iterable[int] = ()
    ) -> None:
        super().__init__(message, indices=indices)
        self.status_code = status_code
        self.body = body


class EndpointInputTooLongError(EndpointStatusError, InputTooLongError):
    """The endpoint refused documents over its window, as ``overflow="error"`` asked.

    Also an :class:`InputTooLongError`, so one ``except`` covers the local and the
    remote scorer.
    """


class EndpointTimeoutError(EndpointError):
    """The request timed out (after the retries allowed)."""


class EndpointConnectionError(EndpointError):
    """The endpoint could not be reached (after the retries allowed)."""


class MalformedResponseError(EndpointError):
    """The endpoint's body does not match the dialect (bad JSON, missing or repeated indices)."""


class CheckpointError(UnsupportedModelError):
    """A checkpoint file is unreadable, inconsistent, unsafe (needs the checkpoint's own
    code) or outside the checkpoint directory; ``path`` names the file."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ResponseTooLargeError(MalformedResponseError):
    """The endpoint's body, after decompression, is larger than ``max_response_bytes``."""


class UnsupportedDeviceError(InvalidInputError):
    """The device cannot run the requested precision mode (or not fast enough to be worth it)."""


class EvaluationDataError(InvalidInputError):
    """An evaluation input (corpus, queries, qrels, run, labelled pairs) is malformed or
    inconsistent: the message names the file and line (unknown ids, duplicate rows,
    empty judgments)."""


class CalibrationMismatchError(InvalidInputError):
    """A calibration file was made for another model or mode than the scorer it is applied
    to (or is not a calibration file); the message shows both."""
