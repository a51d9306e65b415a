"""The only code that decodes image bytes: validate, orient, convert to RGB (reading them is
:mod:`image_classification.image_files`).

Every image goes through :func:`decode_rgb`, so a file that one stage accepts is a file every
stage can read, and a file that cannot be read is reported with the same reason everywhere.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from image_classification.image_files import ImageLimits, ImageReadError, read_bytes

logger = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image on white, so hidden pixels under alpha stay hidden."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


STRETCH_PIXELS_PER_BAND = 1 << 20
"""Pixels of a 16-bit, 32-bit or float image converted at once: bounds the float copy to 8 MB."""


def _row_bands(image: Image.Image) -> Iterable[tuple[int, np.ndarray]]:
    """The image's pixels as arrays of a few rows each, with the first row of each."""
    rows = max(1, STRETCH_PIXELS_PER_BAND // max(1, image.width))
    for top in range(0, image.height, rows):
        yield top, np.asarray(image.crop((0, top, image.width, min(image.height, top + rows))))


def _finite_range(image: Image.Image) -> tuple[float, float]:
    """The smallest and largest finite pixel value (inf, -inf when there is none)."""
    low, high = np.inf, -np.inf
    for _, band in _row_bands(image):
        finite = band[np.isfinite(band)] if band.dtype.kind == "f" else band
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return low, high


def _stretch_to_gray(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float pixels scaled from their finite range to 0..255 (not clipped at 255).

    A band of rows at a time, so no float copy of the whole image is ever made (a 7000 x 7000 16-bit
    PNG took over 1 GB the whole-image way: docs/decisions/0034-near-duplicates-and-16-bit.md). A constant
    image is black; NaN and -inf pixels are black and +inf white.
    """
    low, high = _finite_range(image)
    gray = np.zeros((image.height, image.width), dtype=np.uint8)
    if high > low:
        for top, band in _row_bands(image):
            scaled = band.astype(np.float64)
            scaled -= low  # the same operations, in place, as (pixels - low) / (high - low) * 255
            scaled /= high - low
            scaled *= 255.0
            np.clip(np.nan_to_num(scaled, copy=False, nan=0.0), 0.0, 255.0, out=scaled)
            gray[top : top + len(band)] = scaled
    return Image.fromarray(gray)


def _to_rgb(image: Image.Image, keep_gray: bool = False) -> Image.Image:
    """Convert any Pillow mode we accept to 8-bit RGB (or, with ``keep_gray``, grayscale ones to 8-bit L)."""
    if image.mode == "RGB" or (keep_gray and image.mode == "L"):
        return image
    if keep_gray and image.mode == "1":
        return image.convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        return _flatten_alpha(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        gray = _stretch_to_gray(image)
        return gray if keep_gray else gray.convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def _let_pillow_open(max_pixels: int) -> None:
    """Raise Pillow's own bomb limit (it refuses images over twice ``Image.MAX_IMAGE_PIXELS`` when it
    opens them) to ours where ours is higher, so that ``max_pixels`` alone decides; it is never lowered."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def decode_rgb(
    data: bytes,
    limits: ImageLimits = ImageLimits(),
    draft_size: int | None = None,
    keep_gray: bool = False,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes into an upright 8-bit RGB image.

    Args:
        data: the file's bytes.
        limits: size limits; checked on the declared size, before any pixel is decoded.
        draft_size: for JPEGs, let the decoder scale down by up to 8x while keeping both
            sides at least this many pixels (much faster on large photos). None decodes fully.
        keep_gray: return grayscale images as 8-bit L instead of RGB: the same pixels without
            three copies of them (see :func:`image_classification.model.preprocess_transform`).

    Returns:
        The RGB image and the file's full (width, height) after EXIF orientation.

    Raises:
        ImageReadError: with the reason the image cannot be used.
    """
    if not data:
        raise ImageReadError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # our own pixel limit applies; Pillow's warning would only repeat it
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        _let_pillow_open(limits.max_pixels)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageReadError("not an image: Pillow cannot identify the file format") from None
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"over the pixel limit of {limits.max_pixels:,} (possible decompression bomb; "
                                 f"Pillow: {error}); raise data_prep.image_checks.max_pixels if the image is "
                                 "genuine") from None
        except Exception as error:  # malformed headers raise many exception types
            raise ImageReadError(f"corrupt image header: {error}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageReadError(
                f"declared size {width}x{height} is over the pixel limit of {limits.max_pixels:,} "
                "(possible decompression bomb); raise data_prep.image_checks.max_pixels if the image is genuine"
            )
        if min(width, height) < limits.min_side:
            raise ImageReadError(
                f"too small: {width}x{height}, the shortest side must be at least "
                f"{limits.min_side} px (data_prep.image_checks.min_side)"
            )
        try:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            # orientations 5-8 turn the picture by 90 degrees: width and height swap
            rotated = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            oriented_size = (height, width) if rotated else (width, height)
            oriented = ImageOps.exif_transpose(image)
            rgb = _to_rgb(oriented, keep_gray)
        except Exception as error:  # truncated data, broken chunks, bad EXIF, ...
            raise ImageReadError(f"corrupt or truncated image data: {error}") from None
    return rgb, oriented_size


def load_rgb(path: str, limits: ImageLimits = ImageLimits(), draft_size: int | None = None,
             sha256: str | None = None, keep_gray: bool = False) -> Image.Image:
    """Read (see :func:`read_bytes`) and decode one image file into upright RGB (see :func:`decode_rgb`)."""
    return decode_rgb(read_bytes(path, limits, sha256), limits, draft_size, keep_gray)[0]


def inspect_image(path: str, limits: ImageLimits, draft_size: int = 256) -> dict:
    """Validate one image and describe it; never raises for a bad image.

    Returns:
        A row with ``path``, ``ok``, ``reason`` (empty when ok), ``sha256`` of the bytes,
        ``phash`` (64-bit perceptual hash as 16 hex digits), ``width`` and ``height``.
    """
    row = {"path": path, "ok": False, "reason": "", "sha256": "", "phash": "", "width": 0, "height": 0}
    try:
        data = read_bytes(path, limits)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        # phash reads luminance: a grayscale image needs no RGB copy (and gives the same hash)
        image, (row["width"], row["height"]) = decode_rgb(data, limits, draft_size, keep_gray=True)
        row["phash"] = str(imagehash.phash(image))
        row["ok"] = True
    except ImageReadError as error:
        row["reason"] = str(error)
    return row


def inspect_images(
    paths: Iterable[str], limits: ImageLimits, workers: int = 4, draft_size: int = 256, progress: bool = True
) -> pd.DataFrame:
    """Validate many images in a thread pool (decoding releases the GIL), with a progress bar unless
    ``progress`` is False (a part of a larger run, whose caller shows the progress)."""
    paths = list(paths)
    columns = ["path", "ok", "reason", "sha256", "phash", "width", "height"]
    if not paths:
        return pd.DataFrame(columns=columns)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        rows = list(
            tqdm(
                pool.map(lambda p: inspect_image(p, limits, draft_size), paths),
                total=len(paths),
                desc="Checking images",
                unit="img",
                leave=False,
                disable=None if progress else True,
            )
        )
    return pd.DataFrame(rows, columns=columns)


def thumbnail(path: str, size: int) -> np.ndarray | None:
    """A small RGB copy of an image (for galleries), or None, with a warning, if it can no longer be read."""
    try:
        image = load_rgb(path, ImageLimits(min_side=1), draft_size=size)
    except ImageReadError as error:
        logger.warning("%s cannot be shown: %s", path, error)
        return None
    image.thumbnail((size, size))
    return np.asarray(image)
