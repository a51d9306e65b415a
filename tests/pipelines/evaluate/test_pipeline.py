"""The evaluate pipeline as a whole: after train, on its own, into the catalog's real datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import precision_score, recall_score

from image_classification.scorers.baseline import BaselineWeights
from image_classification.parameters.train import TrainConfig
from image_classification.pipelines.data_prep import create_pipeline as data_prep_pipeline
from image_classification.pipelines.evaluate import create_pipeline
from image_classification.pipelines.evaluate.nodes import EvaluateConfig
from image_classification.pipelines.score import create_pipeline as score_pipeline
from image_classification.pipelines.train import create_pipeline as train_pipeline

from ...conftest import KeptDataset, REPO_ROOT, catalog_entry
from .conftest import small_config

CATALOG = REPO_ROOT / "conf" / "base" / "catalog_evaluate.yml"
RUNTIME = {"device": "cpu", "threads": None, "batch_size": 8, "workers": 0}
FIGURES = ("precision_recall_figure", "roc_figure", "confusion_matrix_figure", "score_histogram_figure", "error_gallery",
           "defect_map_gallery")
PLOTS = ("precision_recall_plot", "roc_plot", "score_histogram_plot", "defect_map_preview")


def test_evaluate_needs_only_what_data_prep_train_and_score_write():
    produced = data_prep_pipeline().all_outputs() | train_pipeline().all_outputs() | score_pipeline().all_outputs()
    datasets = {name for name in create_pipeline().inputs() if not name.startswith("params:")}
    assert datasets == {"image_index", "backbone_features", "model_checkpoint", "scored_index"} <= produced


def test_every_output_is_a_versioned_catalog_entry_seen_by_kedro_viz():
    persisted = create_pipeline().outputs() | {"evaluation_scores", "operating_point", "evaluation_metrics"}
    for name in persisted:  # an explicit entry, or one of catalog_figures.yml's dataset factories
        entry = catalog_entry(name)
        assert entry is not None, name
        assert entry["versioned"] is True, name
        assert entry["metadata"]["kedro-viz"]["layer"] in ("models", "model_output", "reporting"), name


def test_every_png_figure_is_logged_to_mlflow_and_every_plotly_one_previewed_in_kedro_viz():
    for name in FIGURES:
        entry = catalog_entry(name)
        assert entry["type"] == "matplotlib.MatplotlibDataset" and entry["metadata"]["mlflow"]["artifact"] == "figures", name
    for name in PLOTS:
        assert catalog_entry(name)["type"] == "plotly.JSONDataset", name


def test_parameters_file_builds_a_valid_config():
    parameters = yaml.safe_load((REPO_ROOT / "conf" / "base" / "parameters_evaluate.yml").read_text())
    assert list(parameters) == ["evaluate"]
    config = EvaluateConfig(**{**parameters["evaluate"], "target_precision": 0.9})
    assert config.rule in ("point", "lower_bound") and config.baseline_c_grid



def test_pipeline_runs_on_an_in_memory_catalog(evaluation_inputs):
    parameters = {"params:runtime": RUNTIME, "params:seed": 42, "params:evaluate": small_config(),
                  "params:train": TrainConfig(epochs=2)}
    # "assign": deep-copying figures and checkpoints between nodes would only slow the test down
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign")
                           for name, value in {**evaluation_inputs, **parameters}.items()})
    pipeline = create_pipeline()
    for name in pipeline.all_outputs():
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)

    scores, point, metrics = (catalog.load(name) for name in ("evaluation_scores", "operating_point", "evaluation_metrics"))
    assert set(scores["split"]) == {"val", "test"}
    assert point["backbone"] == "efficientnet_lite0" and point["rule"] == "lower_bound"  # the default
    # small data: auto serves the fold stack, its threshold chosen on its out-of-fold scores, measured at it
    served, column = point["candidate"], "fold_stack_score"
    assert served == "fold_stack" and metrics["operating_candidate"] == served
    assert point["threshold_chosen_on"] == "out_of_fold"
    test = scores[(scores["split"] == "test") & scores[column].notna()]
    called = test[column] >= point["threshold"]
    assert metrics[served]["threshold"] == point["threshold"]
    assert metrics[served]["test"]["recall"] == pytest.approx(recall_score(test["target"], called))
    assert metrics[served]["test"]["precision"] == pytest.approx(
        precision_score(test["target"], called, zero_division=np.nan), nan_ok=True)
    assert catalog.load("cross_validation")["enabled"] and len(catalog.load("cross_validation")["folds"]) == 5
    held_out = catalog.load("out_of_fold_scores")
    assert set(held_out["split"]) == {"train", "val"} and held_out["fold"].nunique() == 5
    candidates = [row["candidate"] for row in metrics["candidates"]["table"]]
    assert candidates == ["model", "baseline", "patch", "patch_gaussian", "patch_classifier", "stack", "fold_stack"]
    assert BaselineWeights.from_payload(catalog.load("scorer_models")["baseline"]).c == metrics["baseline"]["C"]
    scored = scores.dropna(subset=[column])
    assert len(catalog.load("gap_analysis")) == ((scored[column] >= point["threshold"]) != (scored["target"] == 1)).sum()
    assert all(isinstance(catalog.load(name), Figure) for name in FIGURES)
    assert all(isinstance(catalog.load(name), go.Figure) for name in PLOTS)
    # the patch Gaussian's maps are drawn beside the served fold stack, labelled as such, one step of the
    # preview per image shown
    gallery = catalog.load("defect_map_gallery")
    assert "patch Gaussian's map, which locates defects beside the served fold stack" in gallery._suptitle.get_text()
    shown = scores[(scores["split"] == "test") & (scores["target"] == 0) & scores[column].notna()]
    assert len(catalog.load("defect_map_preview").layout.sliders[0].steps) == min(len(shown), 3)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A copy of the project's configuration, with a small bootstrap and CPU settings in local/."""
    for item in ("conf", "pyproject.toml", ".telemetry"):
        source = REPO_ROOT / item
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / item)
    (tmp_path / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump({
        "runtime": RUNTIME, "evaluate": {"bootstrap_samples": 200, "rule": "lower_bound"},
    }))
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    bootstrap_project(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_a_kedro_session_runs_evaluate_alone_after_score(project, evaluation_inputs):
    """Typed parameters from YAML, the real catalog's files, and nothing but train's and score's outputs."""
    with KedroSession.create(project_path=project) as session:
        catalog = session.load_context().catalog
        for name, value in evaluation_inputs.items():
            catalog.save(name, value)
    with KedroSession.create(project_path=project) as session:
        session.run(pipeline_names=["evaluate"])
    folder = project / "data" / "07_model_output" / "operating_point.json"
    point = json.loads(next(folder.glob("*/operating_point.json")).read_text())
    assert point["rule"] == "lower_bound" and point["validation"]["bound_method"] == "wilson"
    # small data: the fold stack, its threshold on the out-of-fold scores of a few dozen images, which cannot
    # certify 0.90 precision: the run says so
    assert point["candidate"] == "fold_stack" and point["threshold_chosen_on"] == "out_of_fold"
    assert point["reached"] is False and "Fallback rule" in point["fallback"]
    metrics_file = next((project / "data" / "08_reporting" / "evaluation_metrics.json").glob("*/*"))
    metrics = json.loads(metrics_file.read_text())
    assert metrics["model"]["test_bootstrap"]["samples"] == 200
    assert pd.read_parquet(next((project / "data" / "08_reporting" / "gap_analysis.parquet").glob("*/*"))).shape[1] == 8
    for name in ("precision_recall.png", "roc.png", "confusion_matrix.png", "score_histogram.png", "error_gallery.png",
                 "defect_map_gallery.png"):
        assert min(Image.open(next((project / "data" / "08_reporting" / name).glob("*/*"))).size) > 100, name
    for name in ("precision_recall_plot.json", "roc_plot.json", "score_histogram_plot.json", "defect_map_preview.json"):
        assert json.loads(next((project / "data" / "08_reporting" / name).glob("*/*")).read_text())["data"], name
