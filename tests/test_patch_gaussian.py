"""The patch Gaussian: each patch read against what valid images hold at its own place."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from image_classification.errors import DataError
from image_classification.patch_gaussian import REGULARISATION, PatchGaussian
from image_classification.patches import PatchMemory
from image_classification.scorers import Features, PatchGaussianScorer

GRID, CHANNELS = 4, 6


def aligned(count: int, generator: torch.Generator) -> torch.Tensor:
    """(count, GRID², CHANNELS) patches of aligned parts: position 0 always holds a 'busbar' (channel 0
    high), every other position plain, plus noise."""
    cells = 0.3 * torch.randn(count, GRID * GRID, CHANNELS, generator=generator)
    cells[:, 0, 0] += 4.0
    return cells


def test_a_distance_is_the_mahalanobis_distance_from_the_mean_at_the_patch_s_own_place():
    generator = torch.Generator().manual_seed(0)
    valid = aligned(40, generator)
    gaussian = PatchGaussian.fit(valid)
    mean = valid.double().mean(0)
    deviations = (valid.double() - mean).reshape(-1, CHANNELS).numpy()
    covariance = np.cov(deviations, rowvar=False) + REGULARISATION * np.eye(CHANNELS)
    new = aligned(3, generator)
    difference = (new.double() - mean).numpy()
    expected = np.sqrt(np.einsum("npc,cd,npd->np", difference, np.linalg.inv(covariance), difference))
    np.testing.assert_allclose(gaussian.distances(new).numpy(), expected, rtol=1e-4)
    np.testing.assert_allclose(gaussian.anomaly_scores(new), expected.max(1), rtol=1e-4)


def test_what_is_normal_in_one_place_is_a_defect_in_another():
    """A 'busbar' moved from position 0 to position 5: every patch of the moved image exists among the
    valid patches, so a memory of all valid patches sees nothing, while the patch Gaussian points at
    position 5 (and at the empty position 0)."""
    generator = torch.Generator().manual_seed(1)
    valid = aligned(200, generator)
    moved = aligned(20, generator)
    moved[:, 0, 0] -= 4.0
    moved[:, 5, 0] += 4.0
    gaussian, memory = PatchGaussian.fit(valid), PatchMemory.fit(valid, fraction=1.0, max_size=10**6)
    new_valid = aligned(20, generator)
    assert gaussian.anomaly_scores(moved).min() > 2 * gaussian.anomaly_scores(new_valid).max()
    assert set(gaussian.distances(moved).argmax(1).tolist()) <= {0, 5}
    assert memory.anomaly_scores(moved).mean() < 1.5 * memory.anomaly_scores(new_valid).mean()


def test_the_gaussian_round_trips_through_json_and_refuses_what_it_cannot_read():
    generator = torch.Generator().manual_seed(2)
    gaussian = PatchGaussian.fit(aligned(30, generator))
    again = PatchGaussian.from_payload(json.loads(json.dumps(gaussian.to_payload())))
    new = aligned(4, generator)
    np.testing.assert_allclose(again.distances(new), gaussian.distances(new), rtol=1e-6)
    assert again.describe() == gaussian.describe()
    with pytest.raises(DataError, match="patch_grid"):
        gaussian.distances(torch.zeros(2, 9, CHANNELS))
    with pytest.raises(DataError, match="at least two"):
        PatchGaussian.fit(new[:1])
    with pytest.raises(DataError, match="disagree in shape"):
        PatchGaussian.from_payload({**gaussian.to_payload(), "whitening": [[1.0]]})
    with pytest.raises(DataError, match="incomplete or malformed"):
        PatchGaussian.from_payload({"mean": [[0.0]]})
    assert gaussian.anomaly_scores(torch.zeros(0, GRID * GRID, CHANNELS)).shape == (0,)


def test_its_map_is_drawn_on_the_overlays_scale_clear_on_valid_images_and_hot_on_the_defect():
    """The served map beside the served score: a new valid image's patches stay at most 0.5 (clear on every
    overlay) but for about one in a thousand; a moved 'busbar' is far above it, on one fixed scale."""
    generator = torch.Generator().manual_seed(3)
    scorer = PatchGaussianScorer.of_valid(aligned(300, generator), GRID)
    probability = torch.sigmoid(torch.from_numpy(scorer.defect_map(Features(fine_patches=aligned(300, generator)))))
    assert (probability > 0.5).float().mean() < 0.005
    moved = aligned(20, generator)
    moved[:, 0, 0] -= 4.0
    moved[:, 5, 0] += 4.0
    hot = torch.sigmoid(torch.from_numpy(scorer.defect_map(Features(fine_patches=moved))))
    assert (hot[:, 5] > 0.99).all() and set(hot.argmax(1).tolist()) <= {0, 5}


def test_the_served_map_round_trips_and_an_incomplete_one_is_refused_with_the_fix():
    generator = torch.Generator().manual_seed(4)
    scorer = PatchGaussianScorer.of_valid(aligned(50, generator), GRID)
    payload = json.loads(json.dumps(scorer.to_payload()))
    new = Features(fine_patches=aligned(5, generator))
    np.testing.assert_allclose(PatchGaussianScorer.from_payload(payload).defect_map(new), scorer.defect_map(new),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(DataError, match="needs grid, gaussian, median and rare.*run the evaluate pipeline"):
        PatchGaussianScorer.from_payload({key: value for key, value in payload.items() if key != "rare"})
    with pytest.raises(DataError, match="says grid 5 but holds 16 positions"):
        PatchGaussianScorer.from_payload(payload | {"grid": 5})
    # a map fitted by an earlier version on the (coarse) patch vectors is refused, with the fix
    with pytest.raises(DataError, match="earlier version.*run the train and evaluate pipelines again"):
        PatchGaussianScorer.from_payload({key: value for key, value in payload.items() if key != "features"})


def test_on_a_finer_grid_each_map_cell_is_its_hottest_fine_patch_and_the_scale_is_read_on_cells():
    """The map is drawn on train.patch_grid: each cell holds the highest distance of the fine patches it
    covers (2 x 2 here), so a defect on one fine patch lights its cell, and the image score is the
    hottest cell's; the scale's quantiles are read on cells, as the map is drawn."""
    generator = torch.Generator().manual_seed(6)
    scorer = PatchGaussianScorer.of_valid(aligned(200, generator), 2)
    new = aligned(10, generator)
    new[:, 5, 0] += 4.0  # fine row 1, column 1: inside cell 0 of the 2 x 2 map
    fine = scorer.gaussian.distances(new).reshape(-1, 4, 4)
    cells = fine.reshape(-1, 2, 2, 2, 2).amax((2, 4)).reshape(-1, 4)
    maps = scorer.defect_map(Features(fine_patches=new))
    np.testing.assert_allclose(maps, scorer.log_odds(cells.numpy()), rtol=1e-5, atol=1e-5)
    assert (maps.argmax(1) == 0).all()
    np.testing.assert_allclose(maps.max(1), scorer.log_odds(-scorer.score_samples(Features(fine_patches=new))),
                               rtol=1e-5, atol=1e-5)
    valid_cells = scorer.gaussian.distances(aligned(200, torch.Generator().manual_seed(6))).reshape(-1, 2, 2, 2, 2)
    assert scorer.median == pytest.approx(float(valid_cells.amax((2, 4)).median()), rel=0.05)


def test_on_a_large_set_the_map_s_scale_is_read_on_a_sample_and_stays_the_same(monkeypatch):
    from image_classification.scorers import patch_gaussian

    valid = aligned(600, torch.Generator().manual_seed(5))
    full = PatchGaussianScorer.of_valid(valid, GRID)
    monkeypatch.setattr(patch_gaussian, "SCALE_IMAGES", 200)
    measured, distances = [], PatchGaussian.distances
    monkeypatch.setattr(PatchGaussian, "distances", lambda self, patches, *args: measured.append(len(patches)) or
                        distances(self, patches, *args))
    sampled = PatchGaussianScorer.of_valid(valid, GRID)
    assert measured == [200]  # one pass over 200 of the 600 images, not over all of them
    assert sampled.median == pytest.approx(full.median, rel=0.03) and sampled.rare == pytest.approx(full.rare, rel=0.1)
    # the Gaussian itself is fitted on every image
    torch.testing.assert_close(sampled.gaussian.mean, full.gaussian.mean)
