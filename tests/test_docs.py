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


def test_the_api_reference_turns_sphinx_roles_into_cross_references() -> None:
    import griffe

    spec = importlib.util.spec_from_file_location("griffe_roles", ROOT / "docs" / "griffe_roles.py")
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    package = griffe.load(
        "rerank_plugins",
        search_paths=[str(ROOT)],
        extensions=griffe.load_extensions(roles.SphinxRoles()),
    )
    texts: list[str] = []

    def collect(obj: griffe.Object) -> None:
        if obj.docstring is not None:
            texts.append(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                collect(member)  # type: ignore[arg-type]

    collect(package)
    text = "\n".join(texts)
    assert not roles._ROLE.search(text)
    # a relative role (``:func:`check_scores``` in rerank_plugins.scoring) resolved in scope
    score_groups = package["scoring.score_groups"].docstring.value
    assert '<autoref identifier="rerank_plugins.scoring.check_scores" optional>' in score_groups


def test_the_cli_page_documents_every_subcommand() -> None:
    import argparse

    from rerank_plugins.cli import _parser

    commands = next(
        a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    assert {"rerank", "score", "serve", "evaluate", "calibrate"} <= set(commands)
    text = "\n".join(
        (ROOT / "docs" / page).read_text(encoding="utf-8")
        for page in ("cli.md", "serving.md", "evaluate.md")
    )
    missing = [c for c in commands if f"rerank-plugins {c}" not in text]
    assert missing == [], f"no 'rerank-plugins <command>' example for {missing}"
