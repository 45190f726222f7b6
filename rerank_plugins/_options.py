"""Keyword options checked by name, and objects that pickle by re-running their constructor.

``checked_options`` wraps a constructor so that a misspelt option raises
:class:`~rerank_plugins.errors.UnknownOptionError` listing the valid ones (instead of a bare
``TypeError``, or worse, being ignored), and records the arguments so that
:class:`Rebuildable` objects can be pickled and deep-copied by calling the constructor
again (worker threads, HTTP clients and locks are made anew; shared weights are reused
through the weight cache).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar

from rerank_plugins.errors import UnknownOptionError

__all__ = ["ALIASES", "Rebuildable", "check_fields", "checked_options", "unknown_options_error"]

P = ParamSpec("P")
R = TypeVar("R")

ALIASES: Mapping[str, str] = {
    "top_k": "top_n",
    "k": "top_n",
    "model_name": "model",
    "model_name_or_path": "model",
    "threshold": "score_threshold",
    "max_seq_length": "max_length",
    "batch_size": "batch_tokens",
    "use_auth_token": "token",
    "hf_token": "token",
}
"""Names other libraries use (sentence-transformers, LangChain, LlamaIndex) for our options."""


_SECRETS = frozenset({"api_key", "token"})
"""Options recorded as ``SecretStr``: a plain-text key in no attribute, repr or pickle field."""


class _Arguments:
    """The recorded constructor arguments; a repr that shows none of them (URLs with
    credentials, keys)."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from pydantic import SecretStr

        self.args = args
        self.kwargs = {
            k: SecretStr(v) if k in _SECRETS and isinstance(v, str) else v
            for k, v in kwargs.items()
        }

    def __repr__(self) -> str:
        return "<constructor arguments>"


def unknown_options_error(owner: str, unknown: Iterable[str], valid: Iterable[str]) -> Exception:
    """An :class:`UnknownOptionError` naming each unknown option, a likely fix, the valid ones."""
    valid = sorted(valid)
    hints = []
    for name in sorted(unknown):
        guess = ALIASES.get(name)
        if guess not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            guess = close[0] if close else None
        hints.append(f"{name!r} (did you mean {guess!r}?)" if guess else repr(name))
    return UnknownOptionError(
        f"{owner} has no option {', '.join(hints)}; valid options: {', '.join(valid)}"
    )


def checked_options(init: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``__init__`` so that unknown keyword arguments raise :class:`UnknownOptionError`.

    The first (outermost) constructor call also records its arguments on the instance for
    :class:`Rebuildable`.
    """
    params = inspect.signature(init).parameters
    valid = {
        n
        for n, p in params.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"
    }

    @functools.wraps(init)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        unknown = set(kwargs) - valid
        if unknown:
            raise unknown_options_error(type(self).__name__, unknown, valid)
        if "_init_arguments" not in vars(self):
            vars(self)["_init_arguments"] = _Arguments(tuple(args[1:]), dict(kwargs))
        return init(*args, **kwargs)

    return wrapper


def _rebuild(cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return cls(*args, **kwargs)


class Rebuildable:
    """Pickle and deep-copy by calling the constructor again with the recorded arguments.

    Subclasses decorate ``__init__`` with :func:`checked_options` and may override
    :meth:`_rebuild_arguments` to swap arguments that must not travel (a hub id for the
    resolved directory, a live client, a plain-text secret).
    """

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        recorded: _Arguments = vars(self)["_init_arguments"]
        return tuple(recorded.args), dict(recorded.kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        args, kwargs = self._rebuild_arguments()
        return (_rebuild, (type(self), args, kwargs))


def check_fields(owner: str, data: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raise :class:`UnknownOptionError` for keys of ``data`` not in ``valid`` (adapters).

    Called before pydantic validation so that the error keeps its type and its hint
    (pydantic's own ``extra="forbid"`` stays as the backstop for ``model_validate``).
    """
    names = set(valid)
    unknown = set(data) - names
    if unknown:
        raise unknown_options_error(owner, unknown, names)
