"""Defect maps as users read them: where a map is high on the image, and what an overlay shows; how a map is
measured against a known defect, and the synthetic defects the benchmark pastes (no data set needed)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.pasted_defects import KINDS, MARGIN, paste_defect
from image_classification.defect_maps import (
    as_grid,
    mask_cells,
    overlay,
    overlay_key,
    peak,
    pixel_auroc,
    pointing_hit,
    upsample,
)
from image_classification.errors import DataError


def test_a_map_is_row_major_from_the_top_left_and_covers_the_whole_image():
    values = np.zeros(16, np.float32)
    values[1 * 4 + 3] = 5.0  # row 1, column 3
    spread = upsample(values, 80, 120)  # a wide image: the grid stretches over all of it
    row, column = np.unravel_index(spread.argmax(), spread.shape)
    assert 20 <= row < 40 and 90 <= column < 120
    assert spread.shape == (80, 120) and spread[:20].max() < spread.max()
    assert as_grid(values)[1, 3] == 5.0


def test_an_overlay_leaves_clean_patches_as_they_are_and_colours_the_defect():
    image = np.full((64, 64, 3), 128, np.uint8)
    values = np.full(16, -6.0, np.float32)  # every patch clearly clean (defect probability 0.002)
    assert (overlay(image, values) == image).all()
    values[0] = 6.0  # the top-left patch clearly defective
    drawn = overlay(image, values)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.abs(drawn[:8, :8].astype(int) - 128).max() > 40 and (drawn[48:, 48:] == 128).all()


def test_a_grey_image_gets_a_colour_overlay():
    assert overlay(np.zeros((32, 32), np.uint8), np.zeros(4)).shape == (32, 32, 3)


def test_a_map_that_is_not_a_square_grid_is_refused():
    with pytest.raises(DataError, match="not a square grid"):
        upsample(np.zeros(15), 10, 10)


def test_the_overlay_key_shows_the_overlay_s_colours_clear_up_to_one_half():
    probability, strip = overlay_key(length=101, background=128)
    assert strip.shape == (1, 101, 3) and probability[0] == 0.0 and probability[-1] == 1.0
    assert (strip[0, :51] == 128).all() and (strip[0, 60:] != 128).any()
    # the key's colour at a probability is the overlay's colour of a map that probability everywhere
    image = np.full((8, 8, 3), 128, np.uint8)
    assert (overlay(image, np.full(4, np.log(0.9 / 0.1)))[0, 0] == strip[0, 90]).all()


def test_a_map_peaks_at_its_highest_patch():
    values = np.zeros(9, np.float32)
    values[2 * 3 + 1] = 4.0
    assert peak(values) == (4.0, 2, 1)


# --- measuring a map against a known defect (benchmarks/defect_maps.py, docs/decisions/0033) -------------------

def test_mask_cells_are_the_patches_a_defect_touches_grown_by_the_dilation():
    mask = np.zeros((40, 40), bool)
    mask[12:14, 12:14] = True  # row 1, column 1 of a 4 x 4 grid (10 px patches)
    assert np.argwhere(mask_cells(mask, 4, dilate=0)).tolist() == [[1, 1]]
    grown = mask_cells(mask, 4, dilate=1)
    assert grown[:3, :3].all() and grown.sum() == 9
    mask[:] = False
    mask[39, 39] = True  # the last pixel belongs to the last patch
    assert np.argwhere(mask_cells(mask, 4, dilate=0)).tolist() == [[3, 3]]
    assert mask_cells(mask, 4, dilate=1).sum() == 4  # clipped at the border


def test_a_map_peaking_on_the_defect_hits_and_one_peaking_elsewhere_misses():
    mask = np.zeros((40, 40), bool)
    mask[5:8, 25:35] = True  # patches (0, 2) and (0, 3)
    on = np.zeros(16)
    on[0 * 4 + 3] = 1.0
    assert pointing_hit(on, mask)
    beside = np.zeros(16)
    beside[1 * 4 + 1] = 1.0  # one patch diagonally off: inside the dilation, outside without it
    assert pointing_hit(beside, mask, dilate=1) and not pointing_hit(beside, mask, dilate=0)
    far = np.zeros(16)
    far[3 * 4 + 0] = 1.0
    assert not pointing_hit(far, mask)


def test_a_perfect_map_gets_pixel_auroc_one_and_an_inverted_one_zero():
    masks, maps = [], []
    for patch in (0, 5, 15):
        mask = np.zeros((40, 40), bool)
        row, column = divmod(patch, 4)
        mask[row * 10:(row + 1) * 10, column * 10:(column + 1) * 10] = True
        masks.append(mask)
        maps.append(np.where(np.arange(16) == patch, 1.0, 0.0))
    # bilinear between patch centres: the defect patch's pixels stay above every clean pixel
    assert pixel_auroc(maps, masks) > 0.99
    assert pixel_auroc([-m for m in maps], masks) < 0.01


def test_pixel_auroc_refuses_what_it_cannot_measure():
    mask = np.zeros((8, 8), bool)
    with pytest.raises(ValueError, match="one mask per map"):
        pixel_auroc([np.zeros(4)], [])
    with pytest.raises(ValueError, match="both defect and clean"):
        pixel_auroc([np.zeros(4)], [mask])
    with pytest.raises(DataError, match="not a square grid"):
        pointing_hit(np.zeros(5), mask)


# --- the pasted defects the benchmark measures maps on ------------------------------------------------------------

def cell(seed: int = 0) -> np.ndarray:
    """A bright, slightly grainy 120 x 100 grey cell, like an EL image of a good cell."""
    return np.random.default_rng(seed).integers(150, 200, size=(120, 100)).astype(np.uint8)


@pytest.mark.parametrize("kind", KINDS)
def test_a_pasted_defect_is_dark_inside_the_image_and_its_mask_is_what_changed(kind):
    image = cell()
    for seed in range(20):
        pasted, mask, made = paste_defect(image, seed, kind)
        assert made == kind and pasted.shape == image.shape and pasted.dtype == np.uint8
        assert (mask == (pasted != image)).all() and mask.any()
        assert (pasted[mask] < image[mask]).all()  # darker, every pixel of it
        assert pasted[mask].mean() < 0.7 * image[~mask].mean()  # than its surroundings
        rows, columns = np.nonzero(mask)
        assert rows.min() >= MARGIN - 2 and rows.max() < 120 - MARGIN + 2  # (a line's width may spill a pixel)
        assert columns.min() >= MARGIN - 2 and columns.max() < 100 - MARGIN + 2
        assert mask.sum() < 0.05 * mask.size  # a few pixels wide: local
    assert (image == cell()).all()  # the original is left as it was


def test_pasted_defects_repeat_with_a_seed_and_differ_across_seeds():
    image = cell()
    first, mask, kind = paste_defect(image, 7)
    again, mask_again, kind_again = paste_defect(image, 7)
    assert (first == again).all() and (mask == mask_again).all() and kind == kind_again
    masks = [paste_defect(image, seed)[1] for seed in range(8)]
    assert len({m.tobytes() for m in masks}) == 8
    assert {paste_defect(image, seed)[2] for seed in range(30)} == set(KINDS)


def test_a_pixel_too_dark_to_darken_is_not_in_the_mask():
    image = np.zeros((80, 80), np.uint8)
    image[:, 40:] = 200
    for seed in range(10):
        pasted, mask, _ = paste_defect(image, seed, "crack")
        assert (mask == (pasted != image)).all() and not mask[:, :40].any()


def test_paste_defect_refuses_what_it_cannot_draw_into():
    with pytest.raises(ValueError, match="grayscale"):
        paste_defect(np.zeros((64, 64, 3), np.uint8), 0)
    with pytest.raises(ValueError, match="no room"):
        paste_defect(np.zeros((40, 40), np.uint8), 0)
    with pytest.raises(ValueError, match="one of"):
        paste_defect(cell(), 0, "hole")
