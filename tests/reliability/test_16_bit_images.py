"""16-bit, 32-bit and float images convert to 8-bit as they always did, without a float copy of the whole
image (issue 41: one 7000 x 7000 16-bit PNG of 95 KB took 1.09 GB to check)."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from image_classification import images
from image_classification.images import decode_rgb


def old_stretch(pixels: np.ndarray) -> np.ndarray:
    """The conversion before issue 41, on the whole image at once (the reference)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return scaled.astype(np.uint8)


def converted(image: Image.Image) -> np.ndarray:
    return np.asarray(images._to_rgb(image, keep_gray=True))


def sixteen_bit(pixels: np.ndarray, mode: str) -> Image.Image:
    order = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
    return Image.frombytes(mode, pixels.shape[::-1], pixels.astype(order).tobytes())


@pytest.fixture(autouse=True)
def _small_bands(monkeypatch):
    """Bands of a few rows, so the tests' small images are converted in many of them."""
    monkeypatch.setattr(images, "STRETCH_PIXELS_PER_BAND", 500)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B"])
@pytest.mark.parametrize("seed", range(3))
def test_16_bit_pixels_convert_as_before(mode, seed):
    rng = np.random.default_rng(seed)
    low, high = sorted(rng.integers(0, 65536, size=2))
    pixels = rng.integers(low, high + 1, size=(97, 61)).astype(np.uint16)
    new = converted(sixteen_bit(pixels, mode))
    assert new.dtype == np.uint8 and new.shape == pixels.shape
    assert np.abs(new.astype(int) - old_stretch(pixels)).max() <= 1
    assert new.min() == 0 and new.max() == (255 if high > low else 0)


@pytest.mark.parametrize("seed", range(3))
def test_32_bit_and_float_pixels_convert_as_before(seed):
    rng = np.random.default_rng(seed)
    whole = rng.integers(-2**31, 2**31, size=(50, 83)).astype(np.int32)
    floats = (rng.standard_normal((50, 83)) * 10.0 ** rng.integers(-3, 6)).astype(np.float32)
    for pixels in (whole, floats):
        assert np.abs(converted(Image.fromarray(pixels)).astype(int) - old_stretch(pixels)).max() <= 1


@pytest.mark.parametrize("value", [0, 7, 65535])
def test_a_constant_image_is_black_as_before(value):
    for image in (sixteen_bit(np.full((20, 30), value), "I;16"), Image.fromarray(np.full((20, 30), value, np.int32)),
                  Image.fromarray(np.full((20, 30), value / 3, np.float32))):
        assert not converted(image).any()


def test_nan_and_inf_leave_the_finite_pixels_stretched():
    """Before, one NaN made the whole image black and an inf gave undefined casts."""
    pixels = np.random.default_rng(0).uniform(-1, 1, size=(40, 40)).astype(np.float32)
    finite = old_stretch(pixels)
    pixels[0, :3] = [np.nan, np.inf, -np.inf]
    new = converted(Image.fromarray(pixels))
    assert list(new[0, :3]) == [0, 255, 0]
    assert np.abs(new[1:].astype(int) - finite[1:]).max() <= 1
    assert not converted(Image.fromarray(np.full((5, 5), np.nan, np.float32))).any()


def test_a_large_16_bit_png_converts_within_three_times_its_decoded_size(tally):
    side = 3000
    rows = np.linspace(0, 65535, side, dtype=np.uint16)
    buffer = io.BytesIO()
    sixteen_bit(np.tile(rows, (side, 1)), "I;16").save(buffer, format="PNG")
    data = buffer.getvalue()
    decoded = side * side * 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(images, "STRETCH_PIXELS_PER_BAND", 1 << 20)
        tracemalloc.start()
        try:
            rgb, size = decode_rgb(data, keep_gray=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert size == (side, side) and rgb.mode == "L"
    assert np.array_equal(np.asarray(rgb)[0], old_stretch(rows))
    assert peak < 3 * decoded, f"peak {peak / 2**20:.0f} MiB traced for a {decoded / 2**20:.0f} MiB image"
    tally.add("16-bit images converted under 3x their decoded size")
