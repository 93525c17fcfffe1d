"""notebooks/02_compare_metrics.ipynb executes end to end on the small committed results table."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "02_compare_metrics.ipynb"
TABLE = ROOT / "tests" / "data" / "results_small.csv"


def test_compare_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    assert TABLE.is_file(), "tests/data/results_small.csv is missing"
    # the kernel inherits this environment: the small table, a short bootstrap, the source tree importable
    monkeypatch.setenv("DATACULL_NB_RESULTS", str(TABLE))
    monkeypatch.setenv("DATACULL_NB_N_BOOT", "5")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    text = "".join(out.get("text", "") for out in outputs)
    assert f"runs from {TABLE}" in text and "section 0:" in text and "verdicts:" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 5  # scaling, frontier, comparison, class balance, cost
    tables = "".join(out.get("data", {}).get("text/html", "") for out in outputs)
    assert "diff_pp" in tables and "vs_unpruned_law_pct" in tables
