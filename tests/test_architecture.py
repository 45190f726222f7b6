"""The layer contracts (``[tool.importlinter]`` in pyproject.toml) hold, and they can fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(
        ROOT / "rerank_plugins",
        tree / "rerank_plugins",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_package_keeps_every_layer_contract() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # the protocol reaching into a backend
        ("scoring.py", "import rerank_plugins.local.cross_encoder", "The protocol knows no"),
        # one backend importing the other
        ("local/detect.py", "import rerank_plugins.remote", "Backends are independent"),
        # a backend importing an adapter
        ("remote/retry.py", "import rerank_plugins.langchain", "Layers"),
        # the old loading <-> colbert cycle
        ("local/detect.py", "import rerank_plugins.loading", "No import cycles"),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    tree = copy_tree(tmp_path)
    target = tree / "rerank_plugins" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0
    broken_lines = [ln for ln in proc.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert any(ln.startswith(broken) for ln in broken_lines), proc.stdout
