"""House rules of the package tree: small rooms, short functions (the root's size: test_imports)."""

from __future__ import annotations

import ast
from pathlib import Path

import rerank_plugins

PACKAGE = Path(rerank_plugins.__file__).parent
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_package_module_is_over_600_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_is_over_120_lines() -> None:
    long = {}
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}"] = n
    assert long == {}


def test_the_rules_measure_something() -> None:
    # The limits above are not vacuous: the tree has modules and functions to measure.
    assert len(_modules()) > 20
    assert any(
        isinstance(n, ast.FunctionDef)
        for n in ast.walk(ast.parse((PACKAGE / "scoring.py").read_text(encoding="utf-8")))
    )
