"""The notebooks run top to bottom in a real Jupyter kernel, and ship with their outputs.

Each notebook is executed by ``nbclient`` (the engine behind ``jupyter nbconvert
--execute``): any cell that raises fails the test with the cell and its traceback. The
hub is made unreachable (``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``), so the model
cell takes the tiny local checkpoint, as it does on any offline machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
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
