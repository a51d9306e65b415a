"""A fitted detector saved as arrays and settings scores the same once restored, old files included."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import build_detector

from .helpers import gaussian_data


@pytest.mark.parametrize("name", ["knn", "class_knn", "mahalanobis", "relative_mahalanobis", "gmm", "msp"])
def test_exported_detector_scores_the_same_after_a_safetensors_round_trip(tmp_path, name):
    from image_classification.datasets import SafetensorsDataset
    from image_classification.detectors import DetectorState

    train, targets, test, _ = gaussian_data(20, shift=12.0)
    features = np.clip(train[:, :1], 0, 1) if name == "msp" else train
    queries = np.clip(test[:, :1], 0, 1) if name == "msp" else test
    detector = build_detector(name).fit(features, targets)
    dataset = SafetensorsDataset(filepath=str(tmp_path / "detector.safetensors"))
    dataset.save(DetectorState.of(detector, name, "pooled", threshold=1.5).to_payload())
    loaded = dataset.load()
    assert loaded["metadata"]["threshold"] == 1.5
    np.testing.assert_allclose(DetectorState.from_payload(loaded).restore().score_samples(queries), detector.score_samples(queries), rtol=1e-10)


def test_detector_files_written_before_each_detector_had_its_own_name_still_load():
    import torch

    from image_classification.detectors import DetectorState

    train, targets, test, _ = gaussian_data(6, shift=0.0)
    detector = build_detector("relative_mahalanobis").fit(train, targets)
    old = {"tensors": {"means": torch.as_tensor(detector.means_), "factor": torch.as_tensor(detector.factor_),
                       "background_mean": torch.as_tensor(detector.background_mean_),
                       "background_factor": torch.as_tensor(detector.background_factor_)},
           "metadata": {"type": "mahalanobis", "relative": True, "name": "relative_mahalanobis_pooled",
                        "space": "pooled", "threshold": 2.0, "target_tpr": 0.95}}
    state = DetectorState.from_payload(old)
    assert state.detector == "relative_mahalanobis" and state.target_tpr == 0.95
    np.testing.assert_allclose(state.restore().score_samples(test), detector.score_samples(test), rtol=1e-10)


def test_a_detector_records_the_checkpoint_it_was_fitted_for_and_old_files_load_without_one(caplog):
    from image_classification.detectors import DetectorState

    train, targets, _, _ = gaussian_data(6, shift=0.0)
    state = DetectorState.of(build_detector("knn").fit(train, targets), "knn_pooled", "pooled", 1.0, checkpoint="abc")
    payload = state.to_payload()
    assert payload["metadata"]["checkpoint"] == "abc"
    loaded = DetectorState.from_payload(payload)
    assert loaded.checkpoint == "abc" and "checkpoint" not in loaded.settings
    del payload["metadata"]["checkpoint"]
    assert DetectorState.from_payload(payload).checkpoint is None
