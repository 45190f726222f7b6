"""MkDocs hook: pages generated from the code at build time, so they cannot drift from it.

``<!-- error-reference -->`` in a page is replaced by a table of every class in
``rerank_plugins.errors.__all__``: its bases, when it is raised (its docstring) and the
modules that raise it (found by reading the package's source, not by hand).
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rerank_plugins"
MARKER = "<!-- error-reference -->"


def _error_classes() -> dict[str, Any]:
    from rerank_plugins import errors

    return {name: getattr(errors, name) for name in errors.__all__}


def raised_in(names: set[str]) -> dict[str, list[str]]:
    """For each class name, the modules (dotted) whose code uses it outside imports and
    ``except`` clauses, i.e. where it is raised (directly or through a variable)."""
    found: dict[str, set[str]] = {name: set() for name in names}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py" or (path.name == "__init__.py" and path.parent == PACKAGE):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                skip.update(id(n) for n in ast.walk(node.type))
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in names and id(node) not in skip:
                found[node.id].add(module)
            elif isinstance(node, ast.Attribute) and node.attr in names and id(node) not in skip:
                found[node.attr].add(module)
    return {name: sorted(mods) for name, mods in found.items()}


def error_reference() -> str:
    """The error table, as Markdown."""
    classes = _error_classes()
    where = raised_in(set(classes))
    rows = [
        "| error | is also | raised when | raised in |",
        "|---|---|---|---|",
    ]
    # Depth-first from RerankError, so that the table reads like the hierarchy.
    ordered: list[str] = []

    def visit(cls: type, depth: int) -> None:
        ordered.append(cls.__name__)
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__name__ in classes and sub.__name__ not in ordered:
                visit(sub, depth + 1)

    visit(classes["RerankError"], 0)
    missing = set(classes) - set(ordered)
    if missing:
        raise ValueError(f"error classes outside the RerankError hierarchy: {sorted(missing)}")
    for name in ordered:
        cls = classes[name]
        doc = inspect.getdoc(cls)
        if not doc:
            raise ValueError(f"rerank_plugins.errors.{name} has no docstring to document it")
        when = " ".join(doc.split("\n\n")[0].split())
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__ if b is not Exception)
        modules = ", ".join(f"`{m}`" for m in where[name]) or "(base class: catch it, not raised)"
        rows.append(f"| [`{name}`][rerank_plugins.errors.{name}] | {bases} | {when} | {modules} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, error_reference())
    return markdown
