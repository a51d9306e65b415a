"""Defect maps as users read them: where a map is high on the image, and what an overlay shows."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.defect_maps import as_grid, overlay, overlay_key, peak, upsample
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
