"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings use reST roles (``:class:`~.scoring.Score```, ``:func:`rank```), which
mkdocstrings would print as they are. Each role becomes an autorefs cross-reference to the
object's full path (resolved in the docstring's own scope), marked optional: a link where
the object is rendered on the site, plain code where it is not, never a broken link.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([^`]+)`")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    if target.startswith("."):
        module = obj if obj.is_module else obj.module
        scopes = [module, module.parent] if module.parent is not None else [module]
        for scope in scopes:
            path = scope.path + target
            if _exists(obj, path):
                return path
        return None
    head, _, rest = target.partition(".")
    if head == obj.package.name:
        return target
    try:
        base = obj.resolve(head)
    except (griffe.NameResolutionError, ValueError):
        return None
    return f"{base}.{rest}" if rest else base


def _exists(obj: griffe.Object, path: str) -> bool:
    try:
        obj.package.modules_collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError):
        return False
    return True


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    short, target = match.group(1) == "~", match.group(2)
    title = target.lstrip(".").rsplit(".", 1)[-1] if short else target.lstrip(".")
    path = _resolve(obj, target)
    code = f"<code>{html.escape(title)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _walk(obj: griffe.Object) -> None:
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = _ROLE.sub(lambda m: _link(obj, m), obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrites the roles once the whole package is loaded (so that names resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg)
