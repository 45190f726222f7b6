"""Packaging metadata: license (file and expression), classifiers, URLs, extras, py.typed."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Message:
    """The METADATA that pip reads (and ``pip show`` prints), built from a copy of the project."""
    src = tmp_path_factory.mktemp("src")
    out = tmp_path_factory.mktemp("meta")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rerank_plugins", src / "rerank_plugins")
    code = (
        "import sys\nfrom setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = out / done.stdout.strip().splitlines()[-1]
    assert (info / "licenses" / "LICENSE").is_file()
    return email.message_from_string((info / "METADATA").read_text(encoding="utf-8"))


def test_the_license_file_is_the_apache_2_license() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_pip_sees_the_license_expression_and_file(metadata: Message) -> None:
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_classifiers_and_project_urls(metadata: Message) -> None:
    classifiers = metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression
    assert metadata.get_all("Project-URL")


def test_the_langchain_extra_installs_what_the_readme_example_imports(metadata: Message) -> None:
    requires = metadata.get_all("Requires-Dist") or []
    langchain = {r.split(";")[0].split("<")[0].split(">")[0] for r in requires if "langchain" in r}
    assert {"langchain-core", "langchain-classic"} <= langchain
    assert any(r.startswith("tqdm") and 'extra == "torch"' in r for r in requires)


def test_py_typed_is_shipped() -> None:
    assert (ROOT / "rerank_plugins" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'rerank_plugins = ["py.typed"]' in pyproject
