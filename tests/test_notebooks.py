"""The notebooks run top to bottom in a real Jupyter kernel, and ship with their outputs.

Each notebook is executed by ``nbclient`` (the engine behind ``jupyter nbconvert
--execute``): any cell that raises fails the test with the cell and its traceback. The
hub is made unreachable (``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``), so the model
cell takes the tiny local checkpoint, as it does on any offline machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHEAPEST = "02_llama_index_rag.ipynb"  # about 45 s here; every notebook imports _helpers
WITH_PLOTS = {
    "01_langchain_rag.ipynb",
    "02_llama_index_rag.ipynb",
    "03_long_documents.ipynb",
    "04_serving_and_scale.ipynb",
    "05_evaluate.ipynb",
}


def _images(nb: object) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells  # type: ignore[attr-defined]
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_every_notebook_is_covered() -> None:
    assert {p.name for p in NOTEBOOKS} >= WITH_PLOTS


def _outside_the_clone() -> Path:
    """A new folder that is not inside the clone (nor a folder above it holds the clone's
    ``benchmarks/``), for a copy of ``notebooks/``."""
    place = Path(tempfile.mkdtemp(prefix="rerank_plugins_notebooks_copy_"))
    assert ROOT not in place.parents and not (place.parent / "benchmarks").exists()
    return place


@pytest.fixture
def copied_notebooks() -> Iterator[Path]:
    place = _outside_the_clone()
    shutil.copytree(ROOT / "notebooks", place / "notebooks")
    yield place / "notebooks"
    shutil.rmtree(place, ignore_errors=True)


def test_the_notebook_helpers_import_from_a_copy_outside_the_clone(copied_notebooks: Path) -> None:
    # Only the installed package (here: PYTHONPATH) and the folder itself: no ../benchmarks.
    code = "import _helpers; print(_helpers.round_robin.__module__)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=copied_notebooks,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rerank_plugins.testing.timing"


@pytest.mark.slow
def test_a_copy_of_the_notebooks_folder_runs_outside_the_clone(
    copied_notebooks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_notebook_executes_in_a_jupyter_kernel_without_errors(
        copied_notebooks / CHEAPEST, tmp_path, monkeypatch
    )


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_in_a_jupyter_kernel_without_errors(
    notebook: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the plots
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    client.execute()  # raises CellExecutionError (cell source + traceback) on any error

    model_cells = [c for c in nb.cells if "MODEL = choose_model(" in c.source]
    assert len(model_cells) == 1, "one clearly marked cell decides the model"
    printed = "".join(output.get("text", "") for output in model_cells[0].outputs)
    assert "TINY RANDOM-WEIGHT" in printed, "offline, the model cell must take the local checkpoint"
    if notebook.name in WITH_PLOTS:
        assert _images(nb) >= 1, "the plots were not drawn"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_its_outputs_and_stays_small(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "run it before committing"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], (
        "committed with an error"
    )
    if notebook.name in WITH_PLOTS:
        assert _images(nb) >= 1
    assert notebook.stat().st_size < 400_000


_NOT_FOR_READERS = ("/tmp/", "/root/", "/home/", "/work/", "core_worker", "Missing packages")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_outputs_carry_no_machine_paths_or_ray_internals(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    texts = [
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    ]
    found = [(s, t[:120]) for t in texts for s in _NOT_FOR_READERS if s in t]
    assert not found, found
