"""Experiment tracking: each `kedro run` is one MLflow run in the project's own SQLite store, with
its parameters, metrics, figures and registered model; a store that cannot be written costs a
warning, not the run; the MLflow UI shows a run's metric in Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from image_classification.tracking import SWITCH, flatten_metrics

from .conftest import DEMO_PIPELINES, REPO_ROOT, cli_params
from .test_viz import chromium_page, free_port, needs_chromium, stop

EVALUATE_PARAMS = "evaluate.bootstrap_samples=50,runtime.threads=1,runtime.workers=0"


def test_flatten_metrics_keeps_numbers_by_their_path():
    data = {"model": {"test": {"recall": 0.9, "reached": True, "note": "x", "auroc": None},
                      "test_bootstrap": {"recall": [0.8, 1.0]}}, "bic": {"2": -5}}
    assert flatten_metrics(data, "evaluation_metrics") == {
        "evaluation_metrics.model.test.recall": 0.9,
        "evaluation_metrics.model.test_bootstrap.recall.0": 0.8,
        "evaluation_metrics.model.test_bootstrap.recall.1": 1.0,
        "evaluation_metrics.bic.2": -5.0,
    }


def kedro(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "kedro", *args]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "COLUMNS": "200", **(env or {})})
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def mlflow_runs(project: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns.db'}")
    return mlflow.search_runs(experiment_names=["image_classification"], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def project_copy(demo_run: Path, tmp_path_factory) -> Path:
    """The demo run's project, copied so that the runs these tests add leave demo_run as it was."""
    project = tmp_path_factory.mktemp("tracking") / "project"
    shutil.copytree(demo_run, project, ignore=shutil.ignore_patterns("mlruns.db", "mlartifacts"))
    shutil.copy(demo_run / "mlruns.db", project / "mlruns.db")  # its artifacts stay where they were logged
    return project


@pytest.mark.slow
def test_the_demo_run_left_one_mlflow_run_with_metrics_figures_and_model(demo_run):
    runs = mlflow_runs(demo_run)
    assert len(runs) == 1, runs[["run_id", "tags.mlflow.runName"]]
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert set(run["tags.pipelines"].split(",")) == set(DEMO_PIPELINES.split(","))
    assert run["params.train.epochs"] == "2" and run["params.evaluate.bootstrap_samples"] == "100"
    for metric in ("evaluation_metrics.model.test.recall", "evaluation_metrics.model.test.precision",
                   "evaluation_metrics.model.test.auroc", "evaluation_metrics.model.test.average_precision",
                   "evaluation_metrics.baseline.test.recall", "evaluation_metrics.model.test_bootstrap.recall.0",
                   "zero_shot_metrics.detectors.knn_pooled.all_unseen.auroc",
                   "zero_shot_metrics.detectors.knn_pooled.per_kind.digit.auroc",
                   "clustering_metrics.gmm.ari"):
        assert 0.0 <= run[f"metrics.{metric}"] <= 1.0, metric
    # each node's wall time, to compare runs on speed
    assert run["metrics.node_seconds.train_classifier"] > 0.0
    assert {c.removeprefix("metrics.node_seconds.") for c in runs.columns if c.startswith("metrics.node_seconds.")} >= {
        "extract_features", "check_images", "score_candidates", "plot_roc"}
    artifact_root = Path(run["artifact_uri"].removeprefix("file://"))
    assert artifact_root.is_relative_to(demo_run), "MLflow wrote outside the project"
    assert {"roc.png", "training_curves.png", "zero_shot_embedding.png", "error_gallery.png", "defect_map_gallery.png"} <= {
        p.name for p in (artifact_root / "figures").iterdir()}
    assert {"model.safetensors", "operating_point.json", "anomaly_detector.safetensors"} <= {
        p.name for p in (artifact_root / "model").iterdir()}


@pytest.mark.slow
def test_two_runs_with_different_parameters_give_two_mlflow_runs_whose_metrics_differ(project_copy):
    before = len(mlflow_runs(project_copy))
    for target in ("0.5", "0.95"):
        kedro(project_copy, "run", "--pipelines", "evaluate", "--params", f"target_precision={target},{EVALUATE_PARAMS}")
    runs = mlflow_runs(project_copy).iloc[before:]
    assert len(runs) == 2
    assert list(runs["tags.stage"]) == ["evaluate", "evaluate"]
    assert list(runs["tags.env"]) == ["local", "local"]  # Kedro's default environment
    assert list(runs["tags.mlflow.runName"]) == ["local: evaluate", "local: evaluate"]
    assert list(runs["params.evaluate.target_precision"]) == ["0.5", "0.95"]
    assert list(runs["metrics.evaluation_metrics.target_precision"]) == [0.5, 0.95]
    assert list(runs["metrics.evaluation_metrics.model.test_bootstrap.samples"]) == [50.0, 50.0]
    # a lower target never asks for a higher threshold
    thresholds = list(runs["metrics.evaluation_metrics.model.threshold"])
    assert thresholds[0] <= thresholds[1]

    # each evaluate registered a model version: the last one loads and scores images at its threshold
    import mlflow

    model = mlflow.pyfunc.load_model("models:/image_classification/latest")
    images = sorted((project_copy / "data" / "01_raw" / "demo").rglob("*.png"))[:3]
    predictions = model.predict(pd.DataFrame({"path": [str(path) for path in images]}))
    assert predictions["score"].between(0, 1).all()
    served = list(runs["metrics.evaluation_metrics.served.threshold"])  # the served candidate's, which the model applies
    expected = ["valid" if score >= served[1] else "invalid" for score in predictions["score"]]
    assert list(predictions["predicted_label"]) == expected
    # and says where: the demo's patch scores draw a map of every image, as predict writes it
    assert all(len(values) == grid ** 2 for values, grid in zip(predictions["defect_map"], predictions["defect_map_grid"]))


@pytest.mark.slow
def test_a_run_in_another_environment_is_named_and_tagged_after_it(project_copy):
    """Runs of two environments share the store: each says which it was, and its command can be rerun."""
    (project_copy / "conf" / "staging").mkdir(exist_ok=True)
    before = len(mlflow_runs(project_copy))
    kedro(project_copy, "run", "--env", "staging", "--pipelines", "data_prep")
    run = mlflow_runs(project_copy).iloc[before:].iloc[0]
    assert run["tags.env"] == "staging" and run["tags.mlflow.runName"] == "staging: data_prep"
    assert run["tags.kedro_command"].endswith("--env staging"), run["tags.kedro_command"]


@pytest.mark.slow
def test_two_runs_in_one_process_give_two_mlflow_runs_and_leave_none_open(project_copy, monkeypatch):
    """As in a notebook (`kedro jupyter` starts it in notebooks/): each session.run is its own MLflow run,
    closed when it ends, in the project's own store (mlflow.yml names it relatively, sqlite:///mlruns.db)."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    assert "mlflow_tracking_uri: sqlite:///mlruns.db" in (project_copy / "conf" / "base" / "mlflow.yml").read_text()
    before = len(mlflow_runs(project_copy))
    notebooks = project_copy / "notebooks"
    notebooks.mkdir(exist_ok=True)
    monkeypatch.chdir(notebooks)
    bootstrap_project(project_copy)
    params = cli_params(EVALUATE_PARAMS)  # nested, as --params gives them: a flat "evaluate.x" key is refused
    try:
        for target in (0.6, 0.9):
            with KedroSession.create(project_path=project_copy,
                                     runtime_params={**params, "target_precision": target}) as session:
                session.run(pipeline_names=["evaluate"])
            assert mlflow.active_run() is None
    finally:
        while mlflow.active_run():
            mlflow.end_run()
    assert not (notebooks / "mlruns.db").exists(), "a second store beside the notebook"
    runs = mlflow_runs(project_copy).iloc[before:]
    assert list(runs["params.evaluate.target_precision"]) == ["0.6", "0.9"]
    assert list(runs["status"]) == ["FINISHED", "FINISHED"]


def test_relative_store_paths_in_mlflow_yml_are_anchored_at_the_project(tmp_path):
    from image_classification.tracking import _anchored_config

    def experiment(artifact_location: str) -> dict:
        return {"experiment": {"name": "x", "create_experiment_kwargs": {"artifact_location": artifact_location}}}

    config = {"server": {"mlflow_tracking_uri": "sqlite:///mlruns.db", "mlflow_registry_uri": None},
              "tracking": experiment("mlartifacts")}
    anchored = _anchored_config(config, tmp_path)
    assert anchored["server"] == {"mlflow_tracking_uri": f"sqlite:///{tmp_path.as_posix()}/mlruns.db",
                                  "mlflow_registry_uri": None}
    assert anchored["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] == \
        f"{tmp_path.as_posix()}/mlartifacts"
    assert config["server"]["mlflow_tracking_uri"] == "sqlite:///mlruns.db", "the loaded config was changed in place"
    # what already names one place stays as it is
    for uri in (f"sqlite:///{tmp_path}/store.db", "sqlite:///:memory:", "http://tracking:5000", "databricks"):
        kept = _anchored_config({"server": {"mlflow_tracking_uri": uri}}, tmp_path)
        assert kept["server"]["mlflow_tracking_uri"] == uri
    for location in ("s3://bucket/artefacts", str(tmp_path / "artefacts")):
        kept = _anchored_config({"tracking": experiment(location)}, tmp_path)
        assert kept["tracking"]["experiment"]["create_experiment_kwargs"]["artifact_location"] == location


@pytest.mark.slow
def test_a_store_that_cannot_be_written_costs_a_warning_not_the_run(project_copy, tmp_path):
    # Tests run as root, for whom a read-only folder is writable: a path under a regular file is not,
    # for anyone.
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the store's folder should be")
    store = blocker / "mlruns.db"
    (project_copy / "conf" / "local" / "mlflow.yml").write_text(f"server:\n  mlflow_tracking_uri: sqlite:///{store}\n")
    metrics = project_copy / "data" / "08_reporting" / "evaluation_metrics.json"
    versions = len(list(metrics.iterdir()))
    try:
        # wide enough that the log does not wrap the warning
        result = kedro(project_copy, "run", "--pipelines", "evaluate", "--params", EVALUATE_PARAMS,
                       env={"COLUMNS": "1000"})
    finally:
        (project_copy / "conf" / "local" / "mlflow.yml").unlink()
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "MLflow" in line and "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert f"MLflow tracking is off for this run: the MLflow database {store} cannot be written" in warnings[0]
    assert len(list(metrics.iterdir())) == versions + 1, "the run's outputs were not saved"


@pytest.mark.slow
def test_a_locked_store_costs_a_warning_not_the_run(project_copy):
    """Another process holds the database's write lock for the whole run (a second `kedro run`
    writing its own MLflow run, an open sqlite3 shell): the run still ends with its outputs."""
    import sqlite3
    import time

    store = project_copy / "mlruns.db"
    metrics = project_copy / "data" / "08_reporting" / "evaluation_metrics.json"
    versions = len(list(metrics.iterdir()))
    lock = sqlite3.connect(store, timeout=0, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        result = kedro(project_copy, "run", "--pipelines", "evaluate", "--params", EVALUATE_PARAMS,
                       env={"COLUMNS": "1000"})
        seconds = time.monotonic() - started
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "MLflow" in line and "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert str(store) in warnings[0] or "mlruns.db" in warnings[0], warnings[0]
    assert len(list(metrics.iterdir())) == versions + 1, "the run's outputs were not saved"
    assert seconds < 300, f"a locked store held the run for {seconds:.0f} s"


@pytest.mark.slow
def test_tracking_turns_off_with_one_setting(project_copy):
    before = len(mlflow_runs(project_copy))
    kedro(project_copy, "run", "--pipelines", "evaluate", "--params", EVALUATE_PARAMS, env={SWITCH: "off"})
    assert len(mlflow_runs(project_copy)) == before


def start_mlflow_ui(project: Path, log_path: Path) -> subprocess.Popen:
    """``kedro mlflow ui`` on ``project`` in its own session, once it answers on a free port (``.port``)."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "kedro", "mlflow", "ui", "--port", str(port)],
                                   cwd=project, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env)
    process.port = port
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
                if response.status == 200:
                    return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop(process)
                pytest.fail(f"kedro mlflow ui did not answer on port {port}:\n{log_path.read_text()[-5000:]}")
            time.sleep(1)


@pytest.mark.slow
@pytest.mark.browser
@needs_chromium
def test_mlflow_ui_shows_a_runs_metric_in_chromium(demo_run, tmp_path):
    run = mlflow_runs(demo_run).iloc[0]
    recall = run["metrics.evaluation_metrics.model.test.recall"]
    process = start_mlflow_ui(demo_run, tmp_path / "mlflow_ui.log")
    url = f"http://127.0.0.1:{process.port}"
    try:
        with chromium_page(tmp_path / "profile") as page:
            page.goto(f"{url}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}", timeout=120_000)
            page.get_by_text("evaluation_metrics.model.test.recall", exact=True).first.wait_for(timeout=120_000)
            row = page.get_by_role("row").filter(has_text="evaluation_metrics.model.test.recall").first
            assert f"{recall:g}" in row.inner_text(timeout=30_000)
    finally:
        stop(process)


@pytest.mark.slow
def test_a_sigterm_to_kedro_mlflow_ui_stops_its_server_too(tmp_path):
    """`kedro mlflow ui` serves from a child process: a SIGTERM to kedro alone (a service manager, `kill PID`)
    used to leave that child holding the port."""
    import signal

    import psutil

    project = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, project / item)
    (project / "src").mkdir()
    process = start_mlflow_ui(project, tmp_path / "mlflow_ui.log")
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "the server runs in a child process"
        os.kill(process.pid, signal.SIGTERM)  # the parent only, not its process group
        process.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [child.cmdline() for child in alive]
    finally:
        stop(process)
