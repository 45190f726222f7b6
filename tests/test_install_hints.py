"""Every install hint names an extra that exists, and that extra installs the module."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from rerank_plugins import _imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rerank_plugins"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
CORE: list[str] = PYPROJECT["project"]["dependencies"]

_NAME = re.compile(r"^[A-Za-z0-9._-]+")
_SELF = re.compile(r"rerank-plugins\[([A-Za-z0-9,_-]+)\]")


def _sources() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def _distribution(requirement: str) -> str:
    match = _NAME.match(requirement)
    assert match is not None, requirement
    return match.group(0).lower().replace("_", "-")


def _installed_by(extra: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """The distributions ``pip install 'rerank-plugins[extra]'`` asks for, nested extras
    expanded."""
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        nested = _SELF.match(requirement)
        if nested is not None:
            for inner in nested.group(1).split(","):
                if inner not in seen:
                    names |= _installed_by(inner, seen | {extra})
        else:
            names.add(_distribution(requirement))
    return names


def _hinted_extras() -> dict[str, set[str]]:
    """Extra name -> where a hint names it: the require() table, its fallback, and every
    ``rerank-plugins[...]`` or ``MissingExtraError(..., "extra")`` written in the package."""
    hinted: dict[str, set[str]] = {}
    for module, extra in _imports._EXTRA_OF.items():
        hinted.setdefault(extra, set()).add(f"_imports._EXTRA_OF[{module!r}]")
    for path, text in _sources().items():
        for match in _SELF.finditer(text):
            for extra in match.group(1).split(","):
                hinted.setdefault(extra, set()).add(path)
        for match in re.finditer(r"MissingExtraError\([^,()]+,\s*[\"']([^\"']+)[\"']", text):
            hinted.setdefault(match.group(1), set()).add(path)
    return hinted


def test_hints_are_found() -> None:
    # The scan must see the table and the literal hints, or the next test checks nothing.
    hinted = _hinted_extras()
    assert {"torch", "serve", "ray", "bulk", "langchain", "llama-index"} <= hinted.keys()


@pytest.mark.parametrize("extra", sorted(_hinted_extras()))
def test_every_extra_named_in_an_install_hint_exists(extra: str) -> None:
    where = sorted(_hinted_extras()[extra])
    assert extra in EXTRAS, f"{where} name the extra {extra!r}, not in pyproject.toml"


@pytest.mark.parametrize(("module", "extra"), sorted(_imports._EXTRA_OF.items()))
def test_the_hinted_extra_installs_the_module(module: str, extra: str) -> None:
    # The distribution that provides an import name (sklearn -> scikit-learn), when installed.
    provided_by = importlib.metadata.packages_distributions().get(module, [])
    wanted = {d.lower().replace("_", "-") for d in provided_by} | {module.lower().replace("_", "-")}
    installed = _installed_by(extra)
    assert any(
        name in wanted or any(name.startswith(w + "-") for w in wanted) for name in installed
    ), f"rerank-plugins[{extra}] installs {sorted(installed)}, not {module}"


def test_every_module_required_by_the_package_has_a_hint() -> None:
    required = {
        m.split(".")[0]
        for text in _sources().values()
        for m in re.findall(r"\brequire\(\s*[\"']([\w.]+)[\"']", text)
    }
    assert {"torch", "pyarrow", "ray"} <= required  # the scan sees the calls
    core = {_distribution(r).replace("-", "_") for r in CORE}
    unmapped = sorted(required - _imports._EXTRA_OF.keys() - core)
    assert unmapped == [], f"require() of {unmapped} falls back to a guessed extra"


def test_a_missing_core_dependency_asks_to_reinstall_the_package() -> None:
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from rerank_plugins._imports import require\n"
        "from rerank_plugins import MissingExtraError\n"
        "try:\n"
        "    require('httpx')\n"
        "except MissingExtraError as e:\n"
        "    print(e.extra, '|', e)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "None | 'httpx' is not installed; install it with: pip install 'rerank-plugins'"
    )
