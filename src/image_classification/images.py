"""The only code that opens image bytes: read, validate, orient, convert to RGB.

Every image goes through :func:`decode_rgb`, so a file that one stage accepts is a file every
stage can read, and a file that cannot be read is reported with the same reason everywhere.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import threading
import warnings
from collections.abc import Callable, Iterable
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
        max_file_bytes: files larger than this are rejected before they are read, and a read
            stops here whatever size the file claimed (a link to /dev/zero never ends).
        read_timeout_s: the longest one remote (fsspec, not local) file may take to read; a
            stalled network read becomes that file's error instead of a hang.
    """

    min_side: int = 16
    max_pixels: int = 50_000_000
    max_file_bytes: int = 200_000_000
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ParameterError(f"min_side must be at least 1 pixel, got {self.min_side}")
        if self.max_file_bytes < 1 or not self.read_timeout_s > 0:
            raise ParameterError(f"max_file_bytes must be at least 1 and read_timeout_s positive, got "
                                 f"{self.max_file_bytes} and {self.read_timeout_s}")
        if self.max_pixels < self.min_side**2:
            raise ParameterError(
                f"max_pixels ({self.max_pixels}) must be at least min_side squared "
                f"({self.min_side**2})"
            )


_EXIF_ORIENTATION = 0x0112


class ImageReadError(Exception):
    """An image that cannot be used; ``str(error)`` is the reason reported to the user."""


CHANGED_SINCE_INDEXED = (
    "changed since data_prep indexed it: its sha256 no longer matches the image index (truncated, "
    "replaced or still being written); rerun data_prep (`kedro run --pipelines data_prep`) to index it again"
)
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_CHUNK_BYTES = 1 << 20


def _not_a_regular_file(mode: int) -> str:
    """Why a file of this mode is not read, or "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "a special file")
    return f"not a regular file: {kind}; only regular files are read (reading it could block or never end)"


def _too_large(size: str, limit: int) -> ImageReadError:
    return ImageReadError(f"too large: {size}, over the limit of {limit:,} bytes (max_file_bytes); "
                          "raise max_file_bytes if the image is genuine")


def _read_local(path: str, max_bytes: int) -> bytes:
    """Stat first (following links: the file a link points to is what counts), open without blocking,
    check the opened file again (it may have been swapped since), then read at most ``max_bytes``."""
    found = os.stat(path)
    reason, size = _not_a_regular_file(found.st_mode), found.st_size
    if reason:
        raise ImageReadError(reason)
    if size > max_bytes:
        raise _too_large(f"{size:,} bytes", max_bytes)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        reason = _not_a_regular_file(os.fstat(descriptor).st_mode)
        if reason:
            raise ImageReadError(reason)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(descriptor, min(_CHUNK_BYTES, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(descriptor)
    if total > max_bytes:
        raise _too_large("its size said less, but reading went on past the limit", max_bytes)
    return b"".join(chunks)


def _read_remote(url: str, max_bytes: int) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    kind = info.get("type", "file")
    if kind == "directory":
        raise ImageReadError("is a directory, not an image file")
    if kind != "file":
        raise ImageReadError(f"not a regular file ({kind}); only regular files are read")
    if (info.get("size") or 0) > max_bytes:
        raise _too_large(f"{info['size']:,} bytes", max_bytes)
    with fs.open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large("its size said less, but reading went on past the limit", max_bytes)
    return data


def _within(seconds: float, read: Callable[[], bytes]) -> bytes:
    """``read()`` in a daemon thread, given up after ``seconds``: a stalled read is left behind, not waited on."""
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["data"] = read()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, daemon=True, name="image read")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise ImageReadError(f"read timed out after {seconds:g} s (a stalled remote read); "
                             "check the connection or raise read_timeout_s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def read_bytes(path: str, limits: ImageLimits = ImageLimits(), sha256: str | None = None) -> bytes:
    """Read a local path or fsspec URL, turning every file-system failure into a reason.

    Only regular files are opened: pipes, sockets and devices (also behind links) are refused before
    any read, since reading them can block forever or never end. At most ``limits.max_file_bytes`` are
    read; a remote file gets ``limits.read_timeout_s``. With ``sha256``, bytes that no longer hash to
    it (the file changed since it was indexed) are refused too. A path no file system can open (a NUL
    byte, an unknown URL scheme, a scheme whose package or credentials are missing) is one more reason,
    never an exception that stops the run.
    """
    if "\0" in path:
        raise ImageReadError("the path contains a NUL byte, which no file name can hold; fix the path "
                             "(e.g. the CSV row) that lists it")
    try:
        if _is_local(path):
            data = _read_local(path.removeprefix("file://"), limits.max_file_bytes)
        else:
            data = _within(limits.read_timeout_s, lambda: _read_remote(path, limits.max_file_bytes))
    except ImageReadError:
        raise
    except FileNotFoundError as error:
        raise ImageReadError(_not_found(error)) from None
    except IsADirectoryError:
        raise ImageReadError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError("permission denied: the file cannot be read") from None
    except OSError as error:  # symlink loops, I/O errors, remote failures
        raise ImageReadError(f"cannot be read: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 - each remote file system raises its own types
        raise ImageReadError(_unopenable(path, error)) from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageReadError(CHANGED_SINCE_INDEXED)
    return data


def _not_found(error: FileNotFoundError) -> str:
    """A file that is gone, or (fsspec's HTTP file system says "not found" for both) a server that
    could not be reached or answered with an error other than 404."""
    cause = error.__cause__ or error.__context__
    if cause is None or getattr(cause, "status", None) in (404, 410):
        return "missing file: it no longer exists at this path"
    status = getattr(cause, "status", None)
    if status is not None:
        return f"the server answered HTTP {status} ({getattr(cause, 'message', '')}); check the URL and access rights"
    return f"cannot be reached: {cause}; check the address and that the server is up"


def _unopenable(path: str, error: Exception) -> str:
    """Why no file system could open ``path``: an unknown scheme, a missing package or credentials."""
    scheme = path.split("://", 1)[0] if "://" in path else "file"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if isinstance(error, ValueError) and "protocol not known" in first_line.lower():
        return (f"unknown URL scheme '{scheme}://': no installed file system reads it; check the path "
                "(local paths need no scheme)")
    if isinstance(error, ImportError):
        return f"cannot read '{scheme}://' URLs: {first_line} (pip install it, or copy the file locally)"
    return f"cannot be read from '{scheme}://': {type(error).__name__}: {first_line}"


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
