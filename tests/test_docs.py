"""The documentation's generated pages cover the code they describe."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from rerank_plugins import errors

ROOT = Path(__file__).resolve().parents[1]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_error_reference_has_a_row_for_every_error_class() -> None:
    table = _hooks().error_reference()
    rows = [line for line in table.splitlines()[2:]]
    names = [row.split("`")[1] for row in rows]
    assert sorted(names) == sorted(errors.__all__)


def test_every_error_class_but_the_root_is_raised_somewhere() -> None:
    where = _hooks().raised_in(set(errors.__all__))
    unused = [name for name, modules in where.items() if not modules and name != "RerankError"]
    assert unused == [], f"error classes no module raises: {unused}"


def test_raised_in_ignores_imports_and_except_clauses(tmp_path: Path) -> None:
    hooks = _hooks()
    package = tmp_path / "rerank_plugins"
    package.mkdir()
    (package / "a.py").write_text(
        "from rerank_plugins.errors import ScoringError, InvalidInputError\n"
        "try:\n    pass\nexcept ScoringError:\n    pass\n"
        "def f():\n    raise InvalidInputError('x')\n"
    )
    hooks.PACKAGE, hooks.ROOT = package, tmp_path
    assert hooks.raised_in({"ScoringError", "InvalidInputError"}) == {
        "ScoringError": [],
        "InvalidInputError": ["rerank_plugins.a"],
    }


def test_every_notebook_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in nav, f"{notebook.name} is not in mkdocs.yml's nav"


def test_the_docs_index_lists_every_extra() -> None:
    import re

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    index = (ROOT / "docs" / "index.md").read_text()
    listed = set(re.findall(r"^\| `\[([a-z-]+)\]` \|", index, re.MULTILINE))
    assert listed == set(extras)
