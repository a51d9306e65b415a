"""Open-world precision: each unseen kind counted at its share."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import open_world_precision


def test_open_world_precision_counts_each_unseen_kind_at_its_share():
    # 10 test images: 4 valid accepted, 1 valid rejected, 1 invalid accepted, 4 invalid rejected
    accepted = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    assert open_world_precision(accepted, valid, {}, 0.0) == pytest.approx(0.8)
    # two unseen kinds, 50% and 0% accepted: each counts equally, whatever its image count
    unseen = {"frog": np.array([1, 0] * 50, dtype=bool), "digit": np.zeros(3, dtype=bool)}
    # per unit of images: 0.9*0.4 true, 0.9*0.1 false in-distribution, 0.1*0.25 unseen
    assert open_world_precision(accepted, valid, unseen, 0.1) == pytest.approx(0.36 / (0.36 + 0.09 + 0.025))
    assert np.isnan(open_world_precision(np.zeros(3, bool), np.ones(3, bool), {}, 0.1))
    with pytest.raises(ValueError, match="unseen_share"):
        open_world_precision(accepted, valid, unseen, 1.0)
