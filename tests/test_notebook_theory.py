"""notebooks/03_theory.ipynb executes end to end at a small N (DATACULL_NB_SMALL=1)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_theory.ipynb"


def test_theory_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = str(NOTEBOOK.parent.parent)
    # the kernel inherits this environment: small N, and the source tree importable before installation
    monkeypatch.setenv("DATACULL_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert "N = 80" in outputs and "keep-hard beats keep-easy above alpha_tot" in outputs
    assert not [out for cell in notebook.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
