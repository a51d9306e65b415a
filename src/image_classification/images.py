"""The only code that opens image bytes: read, validate, orient, convert to RGB.

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
from dataclasses import dataclass

import fsspec
import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from image_classification.errors import ParameterError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ImageLimits:
    """What counts as a usable image.

    Attributes:
        min_side: the shortest side, in pixels, below which an image is rejected as too small.
        max_pixels: width x height above which an image is rejected before it is decoded
            (a decompression bomb declares a huge size in a few bytes).
    """

    min_side: int = 16
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ParameterError(f"min_side must be at least 1 pixel, got {self.min_side}")
        if self.max_pixels < self.min_side**2:
            raise ParameterError(
                f"max_pixels ({self.max_pixels}) must be at least min_side squared "
                f"({self.min_side**2})"
            )


_EXIF_ORIENTATION = 0x0112


class ImageReadError(Exception):
    """An image that cannot be used; ``str(error)`` is the reason reported to the user."""


def read_bytes(path: str) -> bytes:
    """Read a local path or fsspec URL, turning every file-system failure into a reason."""
    try:
        with fsspec.open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise ImageReadError("missing file: it no longer exists at this path") from None
    except IsADirectoryError:
        raise ImageReadError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError("permission denied: the file cannot be read") from None
    except OSError as error:  # symlink loops, I/O errors, remote failures
        raise ImageReadError(f"cannot be read: {error.strerror or error}") from None


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite a transparent image on white, so hidden pixels under alpha stay hidden."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode we accept to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        return _flatten_alpha(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: scale the real range to 0..255 instead of clipping
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        return Image.fromarray(scaled.astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")  # L, P, CMYK, YCbCr, 1, ...


def decode_rgb(
    data: bytes,
    limits: ImageLimits = ImageLimits(),
    draft_size: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes into an upright 8-bit RGB image.

    Args:
        data: the file's bytes.
        limits: size limits; checked on the declared size, before any pixel is decoded.
        draft_size: for JPEGs, let the decoder scale down by up to 8x while keeping both
            sides at least this many pixels (much faster on large photos). None decodes fully.

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
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageReadError("not an image: Pillow cannot identify the file format") from None
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"over the pixel limit (possible decompression bomb): {error}") from None
        except Exception as error:  # malformed headers raise many exception types
            raise ImageReadError(f"corrupt image header: {error}") from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageReadError(
                f"declared size {width}x{height} is over the pixel limit of {limits.max_pixels:,} "
                "(possible decompression bomb); raise data_prep.max_pixels if the image is genuine"
            )
        if min(width, height) < limits.min_side:
            raise ImageReadError(
                f"too small: {width}x{height}, the shortest side must be at least "
                f"{limits.min_side} px (data_prep.min_side)"
            )
        try:
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            # orientations 5-8 turn the picture by 90 degrees: width and height swap
            rotated = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            oriented_size = (height, width) if rotated else (width, height)
            oriented = ImageOps.exif_transpose(image)
            rgb = _to_rgb(oriented)
        except Exception as error:  # truncated data, broken chunks, bad EXIF, ...
            raise ImageReadError(f"corrupt or truncated image data: {error}") from None
    return rgb, oriented_size


def load_rgb(path: str, limits: ImageLimits = ImageLimits(), draft_size: int | None = None) -> Image.Image:
    """Read and decode one image file into upright RGB (see :func:`decode_rgb`)."""
    return decode_rgb(read_bytes(path), limits, draft_size)[0]


def inspect_image(path: str, limits: ImageLimits, draft_size: int = 256) -> dict:
    """Validate one image and describe it; never raises for a bad image.

    Returns:
        A row with ``path``, ``ok``, ``reason`` (empty when ok), ``sha256`` of the bytes,
        ``phash`` (64-bit perceptual hash as 16 hex digits), ``width`` and ``height``.
    """
    row = {"path": path, "ok": False, "reason": "", "sha256": "", "phash": "", "width": 0, "height": 0}
    try:
        data = read_bytes(path)
        row["sha256"] = hashlib.sha256(data).hexdigest()
        image, (row["width"], row["height"]) = decode_rgb(data, limits, draft_size)
        row["phash"] = str(imagehash.phash(image))
        row["ok"] = True
    except ImageReadError as error:
        row["reason"] = str(error)
    return row


def inspect_images(
    paths: Iterable[str], limits: ImageLimits, workers: int = 4, draft_size: int = 256
) -> pd.DataFrame:
    """Validate many images in a thread pool (decoding releases the GIL), with a progress bar."""
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
