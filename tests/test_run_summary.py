"""A run ends with its answer: what is served at which threshold, its test recall and precision beside
the best any threshold reaches, what zero_shot flags, what predict decided, the warnings and where the
figures are; the last thing printed, and in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classification.run_summary import summary_text

REPORTS = {
    "split_summary": {"images": 12, "per_split": {"train": {"valid": 3, "invalid": 3}, "val": {"valid": 1, "invalid": 1},
                                                  "test": {"valid": 1, "invalid": 1}}, "rejected": 2},
    "evaluation_metrics": {"target_precision": 0.9, "served": {
        "candidate": "patch_classifier", "threshold": 0.99999702, "threshold_chosen_on": "validation",
        "test_recall": 0.5, "test_precision": 1.0, "test_oracle_recall": 0.75}},
    "zero_shot_metrics": {"flag_detector": "knn_pooled", "decision_per_kind": {"digit": {"flagged": 0.8}}},
}


def test_the_summary_says_what_is_served_how_well_and_where_the_figures_are(tmp_path):
    figures = {"precision_recall_figure": tmp_path / "data/08_reporting/precision_recall.png/v/precision_recall.png"}
    text = summary_text("local: all stages", REPORTS, figures, warnings=3, project=tmp_path)
    lines = text.splitlines()
    assert lines[0] == "Run summary (local: all stages)"
    assert "images: 12 indexed (train 6, val 2, test 2, unseen kinds 2); 2 rejected" in text
    assert "served: patch_classifier at threshold 0.99999702 (chosen on validation; target precision 0.9)" in text
    assert "test: recall 0.500 at precision 1.000; the best any threshold reaches on these images (oracle): recall 0.750" in text
    assert "zero-shot (knn_pooled): flagged 80% of digit" in text
    assert "warnings: 3 (see the log above)" in text
    assert "figure: data/08_reporting/precision_recall.png/v/precision_recall.png" in text
    assert "predict" not in text  # a stage that did not run is not summarised


def test_a_figure_that_was_not_measured_says_so():
    metrics = {"served": {"candidate": "model", "threshold": 0.5, "test_recall": None, "test_precision": None,
                          "test_oracle_recall": None}}
    text = summary_text("x", {"evaluation_metrics": metrics}, {}, 0, Path("/p"))
    assert "recall not measured at precision not measured" in text and "warnings: 0" in text


@pytest.mark.slow
def test_the_demo_run_ends_with_its_summary_and_mlflow_keeps_it(demo_run):
    output = (demo_run / "run_output.txt").read_text()
    summary = output[output.rindex("Run summary ("):].split("\n\n")[0]  # printed with a blank line after it
    assert output.index("Time per node, slowest first") < output.rindex("Run summary (")
    for fragment in ("served: ", " at threshold ", "test: recall ", "(oracle): recall ", "zero-shot (",
                     "warnings: ", "figure: data/08_reporting/precision_recall.png/"):
        assert fragment in summary, (fragment, summary)
    assert "Downloading artifacts" not in output  # MLflow's progress bars no longer end the run's output
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{demo_run / 'mlruns.db'}")
    run = mlflow.search_runs(experiment_names=["image_classification"]).iloc[0]
    logged = Path(run["artifact_uri"].removeprefix("file://")) / "run_summary.txt"
    assert logged.read_text().strip() == summary.strip()


@pytest.mark.slow
def test_a_log_written_to_a_file_or_pipe_is_neither_cut_at_80_columns_nor_spliced_with_progress_bars(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    from .conftest import REPO_ROOT

    shutil.copytree(REPO_ROOT / "conf" / "base", tmp_path / "conf" / "base")
    (tmp_path / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, tmp_path / item)
    (tmp_path / "src").mkdir()
    environment = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "TQDM_DISABLE")}
    result = subprocess.run([sys.executable, "-m", "kedro", "run", "--pipelines", "data_prep"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=environment, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert any("Found 200 labelled and 160 unseen-kind images (0 other files skipped)" in line for line in lines), lines
    # no progress bar spliced into the log: without a terminal a bar is carriage returns between log lines
    assert "\r" not in result.stdout + result.stderr and "img/s" not in result.stdout + result.stderr
