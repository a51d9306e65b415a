"""notebooks/results.ipynb: committed without outputs, and runs headless on a demo run in the Kedro kernel."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "results.ipynb"
KERNEL = "kedro_image_classification"  # the kernel `kedro jupyter setup` (and `kedro jupyter lab`) installs


def test_results_notebook_opens_on_the_projects_kernel():
    """Opened in `kedro jupyter lab` (or any Jupyter), it starts the kernel that loads the project's catalog,
    not a bare Python one on which its first cell fails."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == KERNEL
    assert notebook.metadata["kernelspec"]["display_name"] == "Kedro (image_classification)"


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


def notebook_cell(containing: str) -> str:
    """The source of the one code cell of the notebook that contains ``containing``."""
    cells = [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells
             if cell.cell_type == "code" and containing in cell.source]
    assert len(cells) == 1, containing
    return cells[0]


class _Catalog:
    def __init__(self, **datasets):
        self.datasets = datasets

    def load(self, name):
        return self.datasets[name]


def _zero_shot_metrics(auroc: dict) -> dict:
    return {"detectors": {name: {"all_unseen": None if value is None else {"auroc": value, "fpr_at_95_tpr": value},
                                 "per_kind": {}} for name, value in auroc.items()},
            "flag_detector": "fused", "target_tpr": 0.98, "calibration_images": 20, "calibrated_on": "accepted_valid",
            "valid_test_images_lost_by_combined_decision": 0.05, "decision_per_kind": {}}


@pytest.mark.parametrize("auroc", [
    {"knn_pooled": None, "msp": None, "fused": None},  # no unseen images: nothing measured
    {"knn_pooled": 0.9, "msp": 0.7, "fused": float("nan")},  # the flag alone could not be measured
], ids=["nothing_measured", "flag_not_measured"])
def test_the_notebook_says_not_measured_and_ranks_an_unmeasured_flag_nowhere(auroc, capsys):
    """The detector section's cells, run on their own: an AUROC that is None or NaN reads "not measured",
    never "n/a, rank 12 of 12"."""
    import math

    import numpy as np
    import pandas as pd

    shown = []
    namespace = {"display": shown.append, "math": math, "np": np, "pd": pd,
                 "catalog": _Catalog(zero_shot_metrics=_zero_shot_metrics(auroc))}
    exec(notebook_cell("def fmt("), namespace)
    exec(notebook_cell('catalog.load("zero_shot_metrics")'), namespace)
    printed = capsys.readouterr().out
    flag_line = next(line for line in printed.splitlines() if line.startswith("Flag detector:"))
    assert "fused (AUROC not measured, so not ranked)" in flag_line and "rank" not in flag_line.replace("ranked", "")
    assert "n/a" not in printed and "NaN" not in shown[0].to_string()
    assert (shown[0].loc["fused", "AUROC"]) == "not measured"
    assert namespace["fmt"](None) == namespace["fmt"](float("nan")) == "not measured"


def test_the_notebook_prints_thresholds_with_the_digits_that_tell_them_from_one():
    namespace = {"math": __import__("math"), "pd": __import__("pandas")}
    exec(notebook_cell("def fmt("), namespace)
    assert "format_threshold(operating_point['threshold'])" in notebook_cell('catalog.load("operating_point")')
    assert 'format_threshold(block["threshold"])' in notebook_cell('catalog.load("evaluation_metrics")')
    assert namespace["format_threshold"](0.99999702) == "0.99999702"


@pytest.mark.slow
def test_kedro_jupyter_lab_as_the_readme_says_serves_as_root_and_stops_with_its_command(demo_run, tmp_path):
    """The README's root command starts JupyterLab on the project's kernel; a SIGTERM to `kedro` alone stops
    the server it started."""
    import os
    import signal
    import time
    import urllib.request

    import psutil

    from .test_viz import free_port, stop

    port = free_port()
    environment = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"),
                   "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log_path = tmp_path / "jupyter.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kedro", "jupyter", "lab", "--allow-root", "--no-browser", f"--port={port}",
             "--IdentityProvider.token=", "--ServerApp.port_retries=0"],
            cwd=demo_run, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=environment)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/kernelspecs", timeout=10) as response:
                    specs = json.load(response)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"kedro jupyter lab did not answer:\n{log_path.read_text()[-5000:]}")
                time.sleep(1)
        assert specs["default"] == KERNEL and KERNEL in specs["kernelspecs"]
        children = psutil.Process(process.pid).children(recursive=True)
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [child.cmdline() for child in alive]
    finally:
        stop(process)
