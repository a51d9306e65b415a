"""Nodes of the predict pipeline on tiny inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from image_classification.artefacts import Checkpoint
from image_classification.operating_point import OperatingPoint
from image_classification.backbones import backbone_spec
from image_classification.detectors import DetectorState, MaxSoftmaxDetector
from image_classification.pipelines.predict.nodes import (
    PredictConfig,
    format_for_spreadsheet,
    list_prediction_images,
    predict_images,
)
from image_classification.sources import SourceError

from image_classification.runtime.scoring import model_outputs
from image_classification.scorers.baseline import BaselineWeights

from .helpers import MIXED_FILES, baseline_payload, knn_detector_payload, tiny_checkpoint

NO_EXPORT = {"passed": False, "reason": "not exported in this test"}


def test_list_prediction_images_keeps_non_image_files_as_rows_with_a_reason(mixed_folder):
    table = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused")
    assert len(table) == MIXED_FILES
    notes = table.loc[table["path"].str.endswith("notes.txt"), "error"].iloc[0]
    assert "not an image file type" in notes
    assert (table["error"] == "").sum() == MIXED_FILES - 1  # the others are found bad when decoded


def test_list_prediction_images_reads_a_csv_of_paths(tmp_path, mixed_folder):
    (tmp_path / "new.csv").write_text("path\nincoming/astronaut.jpg\nincoming/missing.jpg\n")
    table = list_prediction_images({"kind": "csv", "csv": str(tmp_path / "new.csv")}, demo_images="unused")
    assert table["path"].tolist() == [str(mixed_folder / "astronaut.jpg"), str(mixed_folder / "missing.jpg")]


def test_list_prediction_images_names_the_parameter_to_fix(tmp_path):
    with pytest.raises(SourceError, match="predict.source.root .* is not a folder"):
        list_prediction_images({"kind": "folder_tree", "root": str(tmp_path / "nowhere")}, demo_images="unused")
    with pytest.raises(ValueError, match="predict.source.csv must be set"):
        PredictConfig(source={"kind": "csv"})


def test_the_old_kind_folder_still_works_and_names_its_new_name(mixed_folder, caplog):
    old = {"kind": "folder", "root": str(mixed_folder)}
    table = list_prediction_images(old, demo_images="unused")
    assert len(table) == MIXED_FILES
    assert "'folder' is deprecated, use 'folder_tree'" in caplog.text
    caplog.clear()
    assert PredictConfig(source=old).source["kind"] == "folder_tree"
    assert "predict.source.kind: 'folder' is deprecated, use 'folder_tree'" in caplog.text
    with pytest.raises(ValueError, match="must be one of demo, folder_tree, csv, got 'class_folders'"):
        PredictConfig(source={"kind": "class_folders", "root": str(mixed_folder)})


def test_threshold_comes_from_the_operating_point_of_this_checkpoint():
    checkpoint = Checkpoint.from_payload(tiny_checkpoint())
    point = {"threshold": 0.37, "backbone": "efficientnet_lite0", "best_epoch": 3, "checkpoint": {"seed": 42}}
    assert OperatingPoint.from_payload(point).threshold_for(checkpoint) == 0.37
    with pytest.raises(ValueError, match="chosen for another checkpoint.*best_epoch"):
        OperatingPoint.from_payload(point | {"best_epoch": 9}).threshold_for(checkpoint)
    with pytest.raises(ValueError, match="no threshold"):
        OperatingPoint.from_payload({"backbone": "efficientnet_lite0"})


def test_labels_follow_the_saved_threshold_not_a_constant(mixed_folder):
    """Two operating points, two calls; the msp detector (no feature space) reads the score itself."""
    images = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused").head(2)
    config = PredictConfig(backend="torch", workers=0, batch_size=2)
    knn = knn_detector_payload(threshold=10.0)
    msp = DetectorState.of(MaxSoftmaxDetector(), "msp", None, threshold=-0.75).to_payload()
    valid, _ = predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn, {"threshold": 0.0}, images, config)
    invalid, summary = predict_images(tiny_checkpoint(), b"", NO_EXPORT, msp, {"threshold": 1.0 - 1e-9}, images, config)
    assert valid["predicted_label"].tolist() == ["valid", "valid"] and not valid["anomaly_flag"].any()
    assert invalid["predicted_label"].tolist() == ["invalid", "invalid"]
    assert summary["threshold"] == 1.0 - 1e-9 and summary["backend"] == "torch"
    confidence = np.maximum(invalid["score"], 1 - invalid["score"])
    np.testing.assert_allclose(invalid["anomaly_score"], -confidence, rtol=1e-6)
    assert (invalid["anomaly_flag"] == (-confidence > -0.75)).all()


def test_a_detector_fitted_for_another_checkpoint_is_refused_before_any_image_is_scored(mixed_folder, caplog):
    """Issue 41, case 3: a detector fitted on another model's features flagged every image, without a word."""
    images = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused").head(2)
    config = PredictConfig(backend="torch", workers=0, batch_size=2)
    other = Checkpoint.from_payload(tiny_checkpoint(seed=1)).fingerprint()
    state = DetectorState.from_payload(knn_detector_payload(threshold=10.0))
    stale = DetectorState.of(state.restore(), state.name, state.space, state.threshold, checkpoint=other).to_payload()
    with pytest.raises(ValueError, match=r"anomaly_detector was fitted .* another model_checkpoint.*"
                                         r"`kedro run --pipelines zero_shot`"):
        predict_images(tiny_checkpoint(), b"", NO_EXPORT, stale, {"threshold": 0.5}, images, config)
    own = Checkpoint.from_payload(tiny_checkpoint()).fingerprint()
    current = DetectorState.of(state.restore(), state.name, state.space, state.threshold, checkpoint=own)
    table, _ = predict_images(tiny_checkpoint(), b"", NO_EXPORT, current.to_payload(), {"threshold": 0.5}, images,
                              config)
    assert len(table) == 2 and "before detectors recorded their checkpoint" not in caplog.text


def test_a_model_trained_at_another_input_size_is_scored_at_that_size(mixed_folder):
    """A checkpoint records model.input_size; predict resizes images to it, not to the backbone's own."""
    images = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused")
    config = PredictConfig(backend="torch", workers=0, batch_size=4)
    payload = tiny_checkpoint()
    small = {"tensors": payload["tensors"], "metadata": payload["metadata"] | {"input_size": 96}}
    checkpoint = Checkpoint.from_payload(small)
    readable = (images["error"] == "").to_numpy()
    paths = images.loc[readable, "path"].tolist()
    at_96 = model_outputs(checkpoint.model(), paths, checkpoint.spec, torch.device("cpu"))
    at_224 = model_outputs(checkpoint.model(), paths, backbone_spec(checkpoint.backbone), torch.device("cpu"))
    ok = np.array([not error for error in at_96["errors"]])
    table, _ = predict_images(small, b"", NO_EXPORT, knn_detector_payload(threshold=10.0), {"threshold": 0.5},
                              images, config)
    scored = table["error"] == ""
    assert scored.sum() == ok.sum() >= 4
    np.testing.assert_allclose(table.loc[scored, "score"], at_96["score"][ok], atol=1e-5)
    assert np.abs(at_96["score"][ok] - at_224["score"][ok]).max() > 1e-3

def test_spreadsheet_table_has_blanks_for_missing_values():
    predictions = pd.DataFrame({"path": ["a.jpg", "b.txt"], "score": [0.1234567891, np.nan],
                                "predicted_label": pd.array(["invalid", pd.NA], dtype="string"),
                                "anomaly_score": [0.5, np.nan], "anomaly_flag": pd.array([False, pd.NA], dtype="boolean"),
                                "accepted_as_valid": [False, False], "error": ["", "skipped"]})
    table = format_for_spreadsheet(predictions)
    assert table.loc[1, ["score", "predicted_label", "anomaly_flag"]].tolist() == ["", "", ""]
    assert table.loc[0, "score"] == 0.123457


def test_config_refuses_unknown_backends_and_threads():
    with pytest.raises(ValueError, match="predict.backend"):
        PredictConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="unknown backends"):
        PredictConfig(threads={"openvino": 2})


def test_an_operating_point_on_the_baseline_calls_images_on_the_baseline_score(mixed_folder):
    """evaluate may serve the baseline: predict then scores the pooled features of the same pass with
    the weights the operating point carries, calls images at the threshold on that score and keeps
    the model's beside it."""
    images = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused")
    config = PredictConfig(backend="torch", workers=0, batch_size=4)
    checkpoint = Checkpoint.from_payload(tiny_checkpoint())
    readable = (images["error"] == "").to_numpy()
    reference = model_outputs(checkpoint.model(), images.loc[readable, "path"].tolist(),
                              backbone_spec(checkpoint.backbone), torch.device("cpu"))
    ok = np.array([not error for error in reference["errors"]])
    expected = BaselineWeights.from_payload(baseline_payload()).score(reference["features"][ok])
    threshold = float(np.median(expected))  # half the readable images on each side
    point = {"threshold": threshold, "candidate": "baseline", "served_weights": baseline_payload(),
             "backbone": "efficientnet_lite0", "best_epoch": 3}
    table, summary = predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn_detector_payload(threshold=10.0), point,
                                    images, config)
    scored = table["error"] == ""
    assert scored.sum() == ok.sum() >= 4
    np.testing.assert_allclose(table.loc[scored, "score"], expected, atol=1e-4)
    np.testing.assert_allclose(table.loc[scored, "model_score"], reference["score"][ok], atol=1e-5)
    assert (table.loc[scored, "predicted_label"] == np.where(expected >= threshold, "valid", "invalid")).all()
    assert 0 < (table.loc[scored, "predicted_label"] == "valid").sum() < scored.sum()
    assert table.loc[~scored, ["score", "model_score"]].isna().all(axis=None) and summary["candidate"] == "baseline"
    assert table["defect_map"].isna().all() and not summary["defect_maps"]["written"]
    assert "reads no patches" in summary["defect_maps"]["reason"]
    without = {key: value for key, value in point.items() if key != "served_weights"}
    with pytest.raises(ValueError, match="serves the baseline but holds no served_weights; run the evaluate"):
        predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn_detector_payload(), without, images, config)


def patch_classifier_on(folder) -> tuple:
    """The folder's listed images, the tiny checkpoint, which readable images it could read, their 3x3 patch
    vectors from its own pass, and a patch classifier fitted on them (arbitrary labels)."""
    from image_classification.patches import PatchClassifier

    images = list_prediction_images({"kind": "folder_tree", "root": str(folder)}, demo_images="unused")
    checkpoint = Checkpoint.from_payload(tiny_checkpoint())
    readable = (images["error"] == "").to_numpy()
    reference = model_outputs(checkpoint.model(), images.loc[readable, "path"].tolist(),
                              backbone_spec(checkpoint.backbone), torch.device("cpu"), patch_grid=3)
    ok = np.array([not error for error in reference["errors"]])
    patches = torch.from_numpy(reference["patches"][ok])
    return images, checkpoint, ok, patches, PatchClassifier.fit(patches, np.arange(len(patches)) % 2, epochs=5,
                                                                hidden=8, top_k=2)


def test_an_operating_point_on_the_patch_classifier_scores_the_patch_vectors_of_the_same_pass(mixed_folder):
    """evaluate may serve the patch classifier: the export then has the patch vectors as a fourth
    output, its parity check compares the served score, and predict calls images on the patch
    classifier's score on either backend, as the MLflow model and the feature cache would score them."""
    from image_classification.pipelines.predict.nodes import check_onnx_parity, export_onnx_model

    images, checkpoint, ok, patches, classifier = patch_classifier_on(mixed_folder)
    assert patches.shape[1:] == (9, 152)
    expected = classifier.scores(patches)
    threshold = float(np.median(expected))
    point = OperatingPoint.for_checkpoint({"threshold": threshold}, checkpoint, "patch_classifier",
                                          classifier.to_payload(grid=3)).to_payload()
    onnx_model = export_onnx_model(tiny_checkpoint(), point, PredictConfig())
    parity = check_onnx_parity(tiny_checkpoint(), onnx_model, images, point, PredictConfig())
    assert parity["passed"] and parity["max_abs_difference"]["served_score"] < 1e-4
    for backend in ("onnxruntime", "torch"):
        table, summary = predict_images(tiny_checkpoint(), onnx_model, parity, knn_detector_payload(threshold=10.0),
                                        point, images, PredictConfig(backend=backend, workers=0, batch_size=4))
        scored = table["error"] == ""
        assert scored.sum() == ok.sum() >= 4 and summary["candidate"] == "patch_classifier", backend
        np.testing.assert_allclose(table.loc[scored, "score"], expected, atol=1e-4)
        assert (table.loc[scored, "predicted_label"] == np.where(expected >= threshold, "valid", "invalid")).all()
    # the model's export alone cannot serve it: the parity check says so and auto falls back to PyTorch
    plain = export_onnx_model(tiny_checkpoint(), {"threshold": 0.5}, PredictConfig())
    refused = check_onnx_parity(tiny_checkpoint(), plain, images, point, PredictConfig())
    assert not refused["passed"] and "no output patches" in refused["reason"] and "export it again" in refused["reason"]
    # nor can an export whose patch vectors are on another grid than the served classifier reads
    other_grid = OperatingPoint.for_checkpoint({"threshold": threshold}, checkpoint, "patch_classifier",
                                               classifier.to_payload(grid=2)).to_payload()
    coarse = export_onnx_model(tiny_checkpoint(), other_grid, PredictConfig())
    refused_grid = check_onnx_parity(tiny_checkpoint(), coarse, images, point, PredictConfig())
    assert not refused_grid["passed"] and "hold 4 patches per image" in refused_grid["reason"]
    table, summary = predict_images(tiny_checkpoint(), plain, refused, knn_detector_payload(threshold=10.0), point,
                                    images, PredictConfig(backend="auto", workers=0, batch_size=4))
    assert summary["backend"] == "torch"
    np.testing.assert_allclose(table.loc[table["error"] == "", "score"], expected, atol=1e-4)


def test_a_served_patch_score_writes_each_images_defect_map_and_overlays_on_request(mixed_folder, tmp_path):
    """Where the served score reads patches, every scored image gets the grid x grid map its score is the
    top-k mean of (row-major, higher = more defective); an unreadable one gets none; the setting turns
    them off; overlays are drawn on the upright image, at most overlay_max_side, one PNG per image."""
    from PIL import Image

    from image_classification.pipelines.predict.nodes import draw_overlays

    images, checkpoint, _, patches, classifier = patch_classifier_on(mixed_folder)
    point = OperatingPoint.for_checkpoint({"threshold": 0.5}, checkpoint, "patch_classifier",
                                          classifier.to_payload(grid=3)).to_payload()
    config = PredictConfig(backend="torch", workers=0, batch_size=4, save_overlays=True, overlay_max_side=40)
    table, summary = predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn_detector_payload(threshold=10.0), point,
                                    images, config)
    scored = table["error"] == ""
    maps = np.stack(table.loc[scored, "defect_map"].to_list())
    np.testing.assert_allclose(maps, classifier.patch_logits(patches).numpy(), atol=1e-4)
    assert (table.loc[scored, "defect_map_grid"] == 3).all()
    assert table.loc[~scored, "defect_map"].isna().all() and table.loc[~scored, "defect_map_grid"].isna().all()
    assert summary["defect_maps"]["written"] and summary["defect_maps"]["bytes_per_image"] == 36
    saved = tmp_path / "predictions.parquet"
    table.to_parquet(saved)
    np.testing.assert_allclose(np.stack(pd.read_parquet(saved).loc[scored, "defect_map"].to_list()), maps)
    assert "defect_map" not in format_for_spreadsheet(table)

    overlays = draw_overlays(table, config)
    assert len(overlays) == scored.sum() and len(set(overlays)) == len(overlays)
    first = next(iter(overlays.values()))()
    assert isinstance(first, Image.Image) and max(first.size) <= 40
    assert draw_overlays(table, PredictConfig(backend="torch")) == {}

    off, summary_off = predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn_detector_payload(threshold=10.0), point,
                                      images, PredictConfig(backend="torch", workers=0, defect_maps=False))
    assert off["defect_map"].isna().all() and "turns" not in summary_off["defect_maps"]["reason"]
    assert summary_off["defect_maps"] == {"written": False, "reason": "predict.defect_maps is off"}
    with pytest.raises(ValueError, match="predict.save_overlays draws the defect maps"):
        PredictConfig(defect_maps=False, save_overlays=True)

    # the baseline served, the patch classifier beside it: its map, labelled as its own; the call is the baseline's
    explained = OperatingPoint.for_checkpoint({"threshold": 0.5}, checkpoint, "baseline", baseline_payload(),
                                              {"candidate": "patch_classifier",
                                               "weights": classifier.to_payload(grid=3)}).to_payload()
    table, summary = predict_images(tiny_checkpoint(), b"", NO_EXPORT, knn_detector_payload(threshold=10.0),
                                    explained, images, PredictConfig(backend="torch", workers=0))
    np.testing.assert_allclose(np.stack(table.loc[scored, "defect_map"].to_list()), maps, atol=1e-4)
    assert summary["candidate"] == "baseline" and "explains the baseline" in summary["defect_maps"]["source"]


def test_an_export_onnx_runtime_cannot_run_fails_the_parity_check_and_auto_scores_in_pytorch(mixed_folder):
    """An export ONNX Runtime refuses (here an operator it does not know, as an older runtime would
    meet a newer opset) is a failed check with the reason, not a crashed run: under backend auto
    predict scores the images in PyTorch instead."""
    import onnx

    from image_classification.pipelines.predict.nodes import check_onnx_parity, export_onnx_model

    images = list_prediction_images({"kind": "folder_tree", "root": str(mixed_folder)}, demo_images="unused")
    point = {"threshold": 0.5}
    exported = onnx.load_from_string(export_onnx_model(tiny_checkpoint(), point, PredictConfig()))
    exported.graph.node[0].op_type = "NoSuchOperator"
    broken = exported.SerializeToString()
    report = check_onnx_parity(tiny_checkpoint(), broken, images, point, PredictConfig())
    assert not report["passed"] and report["reason"].startswith("ONNX Runtime could not run the exported model")
    table, summary = predict_images(tiny_checkpoint(), broken, report, knn_detector_payload(threshold=10.0), point,
                                    images, PredictConfig(backend="auto", workers=0, batch_size=4))
    assert summary["backend"] == "torch" and (table["error"] == "").sum() >= 4
