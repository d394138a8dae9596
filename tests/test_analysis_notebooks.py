"""The notebooks in notebooks/ execute (nbclient) on the results fixture and show their output."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures"

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel")
nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel")
pytest.importorskip("ipykernel", reason="pip install nbformat nbclient ipykernel")

CASES = {  # notebook: (results it reads, PNG figures, HTML tables, Markdown outputs)
    "compare_methods": (FIXTURE / "results" / "quick", 2, 2, 1),
    "ood_curves": (FIXTURE / "results" / "oodml_glyphs", 3, 3, 0),
    "audit": (FIXTURE / "results", 1, 1, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_notebook_executes_with_figures_and_tables(name, monkeypatch):
    results, figures, tables, markdown = CASES[name]
    monkeypatch.setenv("BENCH_RESULTS", str(results))
    monkeypatch.setenv("BENCH_CLAIMS", str(FIXTURE / "claims.yaml"))
    path = ROOT / "notebooks" / f"{name}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), \
        "commit notebooks without outputs"
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    kinds = [kind for o in outputs for kind in o.get("data", {})]
    assert kinds.count("image/png") == figures
    assert kinds.count("text/html") == tables
    assert kinds.count("text/markdown") == markdown
    text = "".join(o.get("text", "") for o in outputs)
    assert str(results) in text  # it read the fixture it was pointed at
