"""notebooks/results.ipynb: committed without outputs, and runs headless on a demo run in the Kedro kernel."""

from __future__ import annotations

import json
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "results.ipynb"
KERNEL = "kedro_image_classification"  # the kernel `kedro jupyter setup` (and `kedro jupyter lab`) installs


def test_results_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.fixture
def kedro_kernel(demo_run, tmp_path, monkeypatch) -> str:
    """The project's Jupyter kernel as ``kedro jupyter setup`` installs it, into a scratch Jupyter folder."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))
    result = subprocess.run([sys.executable, "-m", "kedro", "jupyter", "setup"], cwd=demo_run, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    spec = json.loads((tmp_path / "jupyter" / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][-2:] == ["--ext", "kedro.ipython"]
    return KERNEL


@pytest.mark.slow
def test_results_notebook_runs_on_the_last_run(demo_run, kedro_kernel, tmp_path, monkeypatch):
    # run from a folder that is not a project: the notebook finds the project through the variable
    monkeypatch.setenv("IMAGE_CLASSIFICATION_PROJECT", str(demo_run))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, kernel_name=kedro_kernel, timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    finally:
        nbformat.write(notebook, tmp_path / "results.executed.ipynb")

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    printed = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    shown = [set(output.get("data", {})) for output in outputs]
    # the served score and its threshold, and the other servable score beside it
    for sentence in ("served:", "threshold chosen on", "Served (", "test precision", "oracle", "Beside it, the",
                     "Flag detector:", "Cost:", "images to step through"):
        assert sentence in printed, sentence
    assert sum("application/vnd.plotly.v1+json" in kinds for kinds in shown) >= 5  # PR, histograms, defect maps, two 3D
    assert sum("image/png" in kinds for kinds in shown) >= 4  # confusion matrix, error and defect map galleries, detectors
