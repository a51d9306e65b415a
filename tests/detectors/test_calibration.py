"""Thresholds set on in-distribution scores, and the names and rates refused."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import build_detector, calibrate_threshold


def test_calibration_hits_the_target_rate_on_fresh_data():
    rng = np.random.default_rng(1)
    threshold = calibrate_threshold(rng.normal(size=2000), 0.95)
    accepted = np.mean(rng.normal(size=20000) <= threshold)
    assert abs(accepted - 0.95) < 0.01  # sampling error of a 2000-image calibration set


def test_bad_names_and_rates_are_refused():
    with pytest.raises(ValueError, match="unknown detector 'isolation'"):
        build_detector("isolation")
    with pytest.raises(ValueError, match="target_tpr"):
        calibrate_threshold(np.ones(3), 1.5)
