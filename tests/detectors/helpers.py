"""Generated features with known answers, shared by the detector tests."""

from __future__ import annotations

import numpy as np


def gaussian_data(dimensions: int, shift: float, seed: int = 0, spread: int = 1):
    """Two in-distribution classes away from the origin (so directions differ, as for real
    features), and 'unseen' points moved ``shift`` along ``spread`` other axes."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, dimensions))
    centres[:, 0] = 8.0
    centres[1, 1] = 4.0
    targets = rng.integers(0, 2, size=600)
    train = centres[targets] + rng.normal(size=(600, dimensions))
    test_targets = rng.integers(0, 2, size=300)
    test = centres[test_targets] + rng.normal(size=(300, dimensions))
    unseen_centre = centres[0].copy()
    unseen_centre[2 : 2 + spread] += shift
    unseen = unseen_centre + rng.normal(size=(300, dimensions))
    return train, targets, test, unseen
