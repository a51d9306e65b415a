"""The zero_shot pipeline on its own, from a checkpoint and the score stage's output (in memory)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from ...conftest import KeptDataset, resealed_operating_point

from image_classification.artefacts import Checkpoint
from image_classification.operating_point import OperatingPoint
from image_classification.scorers.baseline import BaselineWeights
from image_classification.model import build_model
from image_classification.patches import PatchClassifier
from image_classification.pipelines.score.nodes import score_index
from image_classification.pipelines.zero_shot import create_pipeline
from image_classification.pipelines.zero_shot.nodes import ZeroShotConfig



def tiny_inputs(seed: int = 0) -> dict:
    """An index of 40 train, 12 val, 12 test and 2 x 8 unseen images, with cached features in
    which the unseen kinds sit far from the labelled images in the pooled space."""
    rng = np.random.default_rng(seed)
    splits = ["train"] * 40 + ["val"] * 12 + ["test"] * 12 + ["unseen"] * 16
    labels = [("valid", "invalid")[i % 2] for i in range(64)] + [None] * 16
    index = pd.DataFrame({
        "path": [f"/images/{i:03d}.png" for i in range(80)],
        "label": pd.array(labels, dtype="string"),
        "kind": pd.array(labels[:64] + ["digit"] * 8 + ["texture"] * 8, dtype="string"),
        "split": pd.array(splits, dtype="string"),
        "sha256": [f"{i:064x}" for i in range(80)],
    })
    index["target"] = index["label"].map({"valid": 1, "invalid": 0}).astype("Int8")
    torch.manual_seed(seed)
    pooled = torch.rand(80, 1280)
    pooled[64:72, :200] += 3.0  # digits: far away
    pooled[72:, 600:900] += 3.0  # textures: far away elsewhere
    checkpoint = Checkpoint.from_model(
        build_model(weights="none"), backbone="efficientnet_lite0", weights="none",
        head={"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2})
    features = {
        "tensors": {"head_input": torch.rand(80, 1280, 4, 4).half(), "pooled": pooled.half(),
                    "patches": torch.rand(80, 4, 3).half()},  # a 2x2 grid of 3-channel patch vectors
        "metadata": {"backbone": "efficientnet_lite0", "head_input": "pooled", "paths": index["path"].tolist(),
                     "sha256": index["sha256"].tolist(), "errors": [""] * 80},
    }
    return {
        "image_index": index,
        "model_checkpoint": checkpoint.to_payload(),
        "scored_index": score_index(checkpoint.to_payload(), features, index, {"device": "cpu", "threads": None}),
        "operating_point": OperatingPoint.for_checkpoint({"threshold": 0.5}, checkpoint).to_payload(),
        "backbone_features": features,
        "pca_projection": index[["path"]].assign(**{f"pc{i}": rng.normal(size=80) for i in (1, 2, 3)}),
        "params:zero_shot": ZeroShotConfig(gmm_components=2),
        "params:seed": 42,
    }


def test_zero_shot_runs_alone_and_flags_far_kinds():
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in tiny_inputs().items()})
    outputs = ["zero_shot_decisions", "zero_shot_metrics", "anomaly_thresholds", "zero_shot_embedding_3d",
               "zero_shot_embedding_figure", "anomaly_score_figure", "detector_comparison_figure"]
    for name in outputs:
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)

    metrics = catalog.load("zero_shot_metrics")
    assert set(metrics["detectors"]) == set(ZeroShotConfig(gmm_components=2).detector_names)
    assert metrics["detectors"]["knn_pooled"]["all_unseen"]["auroc"] > 0.95
    assert set(metrics["detectors"]["knn_pooled"]["per_kind"]) == {"digit", "texture"}
    assert metrics["decision_per_kind"]["digit"]["accepted_combined"] <= metrics["decision_per_kind"]["digit"]["accepted_by_classifier"]
    precision = metrics["precision"]
    assert metrics["unseen_share"] == 0.1
    # unseen kinds can only lower the precision of what is accepted; the flag keeps out at least as many
    assert precision["open_world_classifier"] <= precision["closed_set_classifier"]
    assert precision["open_world_combined"] >= precision["open_world_classifier"]
    decisions = catalog.load("zero_shot_decisions")
    assert len(decisions) == 12 + 16
    assert (decisions["accepted_as_valid"] == ((decisions["score"] >= 0.5) & ~decisions["anomaly_flag"])).all()
    assert catalog.load("zero_shot_embedding_3d").data  # a plotly figure with traces


def test_with_the_baseline_served_the_decisions_use_its_score():
    inputs = tiny_inputs()
    pooled = inputs["scored_index"]["tensors"]["pooled"].float().numpy()
    weights = BaselineWeights(mean=pooled.mean(axis=0), scale=pooled.std(axis=0), coef=np.random.default_rng(1).normal(
        0, 0.1, 1280), intercept=0.0, c=1.0, backbone="efficientnet_lite0")
    served = weights.score(pooled)
    inputs["operating_point"] = resealed_operating_point(inputs["operating_point"], candidate="baseline",
                                                         threshold=float(np.median(served[52:64])),
                                                         served_weights=weights.to_payload())
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in ("zero_shot_decisions", "zero_shot_metrics"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    decisions = catalog.load("zero_shot_decisions").set_index("path")
    rows = inputs["image_index"]["path"].to_numpy()[52:]  # test and unseen images
    np.testing.assert_allclose(decisions.loc[rows, "score"], served[52:], rtol=1e-6)
    np.testing.assert_allclose(decisions.loc[rows, "model_score"], inputs["scored_index"]["tensors"]["score"][52:])
    called = served[52:] >= inputs["operating_point"]["threshold"]
    assert (decisions.loc[rows, "predicted_label"] == np.where(called, "valid", "invalid")).all()
    assert catalog.load("zero_shot_metrics")["classifier"] == "baseline"


def test_with_the_patch_classifier_served_the_decisions_use_its_score_of_the_cached_patches():
    inputs = tiny_inputs()
    patches = inputs["backbone_features"]["tensors"]["patches"]
    classifier = PatchClassifier.fit(patches[:40], np.array([1, 0] * 20), epochs=2, hidden=4, top_k=2)
    served = classifier.scores(patches)
    inputs["operating_point"] = resealed_operating_point(inputs["operating_point"], candidate="patch_classifier",
                                                         threshold=float(np.median(served[52:64])),
                                                         served_weights=classifier.to_payload(grid=2))
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in ("zero_shot_decisions", "zero_shot_metrics"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    decisions = catalog.load("zero_shot_decisions").set_index("path")
    rows = inputs["image_index"]["path"].to_numpy()[52:]
    np.testing.assert_allclose(decisions.loc[rows, "score"], served[52:], rtol=1e-6)
    called = served[52:] >= inputs["operating_point"]["threshold"]
    assert (decisions.loc[rows, "predicted_label"] == np.where(called, "valid", "invalid")).all()
    assert catalog.load("zero_shot_metrics")["classifier"] == "patch_classifier"
    # a feature cache without patch vectors cannot serve it, and the error says what to rerun
    del inputs["backbone_features"]["tensors"]["patches"]
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    with pytest.raises(Exception, match="holds no patch vectors"):
        SequentialRunner().run(create_pipeline(), catalog)


def test_config_refuses_an_unknown_flag_detector():
    with pytest.raises(ValueError, match="flag_detector 'knn_pixels'"):
        ZeroShotConfig(flag_detector="knn_pixels")
    with pytest.raises(ValueError, match="unknown detector"):
        ZeroShotConfig(detectors=["knn", "isolation_forest"])


def test_without_unseen_images_the_detectors_are_still_fitted_and_the_run_completes(caplog):
    """A user with labelled images only: predict still gets a calibrated flag detector; the metrics
    say that separation could not be measured instead of the run failing at its last stage."""
    inputs = tiny_inputs()
    keep = inputs["image_index"]["split"] != "unseen"
    inputs["image_index"] = inputs["image_index"][keep].reset_index(drop=True)
    scored = inputs["scored_index"]
    inputs["scored_index"] = {
        "tensors": {name: tensor[: len(inputs["image_index"])] for name, tensor in scored["tensors"].items()},
        "metadata": {**scored["metadata"], "sha256": inputs["image_index"]["sha256"].tolist(),
                     "errors": [""] * len(inputs["image_index"])},
    }
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    for name in ("zero_shot_metrics", "anomaly_detector", "detector_comparison_figure"):
        catalog[name] = KeptDataset(copy_mode="assign")
    with caplog.at_level("WARNING"):
        SequentialRunner().run(create_pipeline(), catalog)

    metrics = catalog.load("zero_shot_metrics")
    assert all(block["all_unseen"] is None and block["per_kind"] == {} for block in metrics["detectors"].values())
    assert set(metrics["decision_per_kind"]) == {"in-distribution (valid)", "in-distribution (invalid)"}
    assert metrics["precision"]["open_world_combined"] is None and metrics["precision"]["closed_set_combined"] > 0
    detector = catalog.load("anomaly_detector")
    assert detector["metadata"]["name"] == "fused" and np.isfinite(detector["metadata"]["threshold"])
    # the model it was fitted for, so that predict refuses it for another one
    assert detector["metadata"]["checkpoint"] == inputs["scored_index"]["metadata"]["checkpoint"]
    # the training images, in each of the fused detector's spaces (embedding, pooled)
    assert detector["tensors"]["0.reference"].shape == (40, 50)
    assert detector["tensors"]["1.reference"].shape == (40, 1280)
    assert "No unseen-kind images" in caplog.text


def test_scores_of_another_checkpoint_are_refused():
    inputs = tiny_inputs()
    torch.manual_seed(7)
    retrained = Checkpoint.from_model(
        build_model(weights="none"), backbone="efficientnet_lite0", weights="none",
        head={"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2})
    inputs["model_checkpoint"] = retrained.to_payload()
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in inputs.items()})
    with pytest.raises(ValueError, match="kedro run --pipelines score"):
        SequentialRunner().run(create_pipeline(), catalog)



def test_flag_thresholds_keep_the_share_of_accepted_valid_validation_images_asked_for():
    """By default the flag's threshold is set on the images it can cost: validation images labelled
    valid that the classifier accepts. target_tpr 0.9 of 30 such images flags 2 of them (the
    quantile at or above 90%), whatever the invalid and rejected ones score."""
    from image_classification.pipelines.zero_shot.nodes import calibration_images

    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "split": ["val"] * 60 + ["test"] * 10,
        "target": pd.array([1] * 40 + [0] * 20 + [1] * 10, dtype="Int8"),
        "score": np.r_[np.full(30, 0.9), np.full(10, 0.1), rng.uniform(size=20), np.full(10, 0.9)],
        "anomaly": rng.normal(size=70),
    })
    point = OperatingPoint(threshold=0.5, choice={})
    config = ZeroShotConfig(target_tpr=0.9)
    rows, population = calibration_images(table, point, config)
    assert population == "accepted_valid" and rows.sum() == 30 and rows[:30].all()
    from image_classification.detectors import calibrate_threshold

    threshold = calibrate_threshold(table.loc[rows, "anomaly"].to_numpy(), config.target_tpr)
    assert (table["anomaly"][:30] > threshold).sum() == 2
    rows, population = calibration_images(table, point, ZeroShotConfig(calibrate_on="validation"))
    assert population == "validation" and rows.sum() == 60


def test_with_too_few_accepted_valid_validation_images_thresholds_fall_back_to_all_of_them(caplog):
    """The tiny index has 6 valid validation images: fewer than the calibration needs, so the run
    says so, calibrates on all 12 validation images and records which it used."""
    catalog = DataCatalog({name: MemoryDataset(value, copy_mode="assign") for name, value in tiny_inputs().items()})
    for name in ("zero_shot_metrics", "anomaly_detector"):
        catalog[name] = KeptDataset(copy_mode="assign")
    with caplog.at_level("WARNING"):
        SequentialRunner().run(create_pipeline(), catalog)
    metrics = catalog.load("zero_shot_metrics")
    assert metrics["calibrated_on"] == "validation" and metrics["calibration_images"] == 12
    assert catalog.load("anomaly_detector")["metadata"]["calibrated_on"] == "validation"
    assert "valid validation images are accepted by the classifier" in caplog.text


def test_config_refuses_an_unknown_calibration_or_fusion():
    with pytest.raises(ValueError, match="calibrate_on"):
        ZeroShotConfig(calibrate_on="test")
    with pytest.raises(ValueError, match="zero_shot.fusion"):
        ZeroShotConfig(fusion="max")
