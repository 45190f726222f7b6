"""The notebooks run top to bottom (on a tiny local checkpoint instead of the hub model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(
    notebook: Path, modernbert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RERANK_MODEL", str(modernbert_dir))
    cells = json.loads(notebook.read_text())["cells"]
    namespace: dict[str, object] = {"__name__": "__notebook__"}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{notebook.name}", "exec"), namespace)
    if notebook.name == "quickstart.ipynb":
        assert len(namespace["lc_docs"]) == 2  # type: ignore[arg-type]
        assert len(namespace["li_nodes"]) == 2  # type: ignore[arg-type]
        assert namespace["result"].truncated is True  # type: ignore[attr-defined]
