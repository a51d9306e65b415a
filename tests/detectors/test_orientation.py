"""Every registered detector is oriented one way: a higher score means more anomalous.

The registry's own check (test_registry.py) ranks one hand-placed outlier; this one asks the same of a
whole cloud of far-away images, in a feature space shaped like the real ones: more dimensions than
training images, and two classes far apart (as the trained embedding puts valid and invalid). There,
relative Mahalanobis ranked far images *below* ordinary ones, as it ranked textures and digits on
cifar10-dev (AUROC 0.008 and 0.047): its background Gaussian came out tighter than the class one off
the training images' span, so the subtraction made far images look the most ordinary.
"""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.detectors import (DETECTORS, DetectorSettings, build_detector, calibrate_threshold, decide,
                                            separation_metrics)

DIMENSIONS = 48
TRAINING_IMAGES = 32  # fewer than the dimensions, as with 1280-d pooled features and a few hundred images
PLAIN = [name for name, cls in DETECTORS.items() if not (cls.space_free or cls.composite)]


def two_classes(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes 40 apart (each centred on its own axis), unit noise in every dimension."""
    targets = rng.integers(0, 2, size=count)
    centres = np.zeros((2, DIMENSIONS))
    centres[[0, 1], [0, 1]] = 40.0
    return centres[targets] + rng.normal(size=(count, DIMENSIONS)), targets


def inputs(name: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Training features and targets, validation features, held-out ordinary features, and far-away
    ones: ordinary images moved 40 in a random direction (their own noise spans about 7)."""
    rng = np.random.default_rng(seed)
    train, targets = two_classes(rng, TRAINING_IMAGES)
    validation, ordinary = two_classes(rng, 60)[0], two_classes(rng, 200)[0]
    away = rng.normal(size=ordinary.shape)
    far = ordinary + 40.0 * away / np.linalg.norm(away, axis=1, keepdims=True)
    cls = DETECTORS[name]
    if cls.space_free:  # the classifier's probability of valid: sure of ordinary images, unsure of odd ones
        def sure(count: int) -> np.ndarray:
            return np.clip(np.where(rng.integers(0, 2, count) == 1, 0.97, 0.03) + rng.normal(0, 0.02, count),
                           0, 1)[:, None]
        return sure(TRAINING_IMAGES), targets, sure(60), sure(200), rng.uniform(0.35, 0.65, (200, 1))
    if cls.composite:  # every plain detector on its own copy of the space, side by side
        train, validation, ordinary, far = (np.tile(part, len(PLAIN)) for part in (train, validation, ordinary, far))
    return train, targets, validation, ordinary, far


def settings(name: str) -> DetectorSettings:
    if DETECTORS[name].composite:
        return DetectorSettings(fused=tuple((part, f"space{i}") for i, part in enumerate(PLAIN)),
                                fused_widths=(DIMENSIONS,) * len(PLAIN))
    return DetectorSettings()


@pytest.mark.parametrize("name", list(DETECTORS))
def test_far_away_images_score_higher_than_ordinary_ones_for_every_registered_detector(name):
    """Looping over the registry, a new detector is held to this too; and the decision zero_shot and
    predict make with its threshold flags the far images, not the ordinary ones."""
    train, targets, validation, ordinary, far = inputs(name)
    detector = build_detector(name, settings(name)).fit(train, targets).standardise(validation)
    ordinary_scores, far_scores = detector.score_samples(ordinary), detector.score_samples(far)
    auroc = separation_metrics(ordinary_scores, far_scores)["auroc"]
    assert auroc > 0.8, f"{name}: AUROC {auroc:.3f} of far-away images against ordinary ones"

    threshold = calibrate_threshold(detector.score_samples(validation), 0.95)
    scores = np.concatenate([ordinary_scores, far_scores])
    _, flagged, _ = decide(np.ones(len(scores)), scores, 0.5, threshold)
    assert flagged[len(ordinary):].mean() > 0.5 > flagged[:len(ordinary)].mean()
