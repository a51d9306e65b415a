"""Defect maps as users read them: where a map is high on the image, and what an overlay shows."""

from __future__ import annotations

import numpy as np
import pytest

from image_classification.defect_maps import as_grid, overlay, upsample
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
