"""Generated files for the reliability soak: good images in many formats and modes, and bad files
of every kind data_prep must skip, each with the reason it must give."""

from __future__ import annotations

import io
import os
import random
import socket
from pathlib import Path

import numpy as np
from PIL import Image

from ..conftest import bomb_png, jpeg_bytes, noise_image, png_bytes
from .fuzzing import check_one, mutate

GOOD_KINDS = ("png", "jpg", "webp", "bmp", "gif", "grey_png", "rgba_png", "sixteen_bit_png", "cmyk_jpg",
              "tiff", "exif_jpg", "wide_png")


def good_image(index: int) -> tuple[str, bytes]:
    """A distinct picture in one of many formats and modes; index picks both."""
    kind = GOOD_KINDS[index % len(GOOD_KINDS)]
    rng = np.random.default_rng(index)
    size = (int(rng.integers(16, 64)), int(rng.integers(16, 64)))
    picture = noise_image(100_000 + index, size)
    buffer = io.BytesIO()
    if kind == "png":
        return ".png", png_bytes(picture)
    if kind == "jpg":
        return ".jpg", jpeg_bytes(picture, quality=90)
    if kind == "webp":
        picture.save(buffer, format="WEBP", lossless=True)
        return ".webp", buffer.getvalue()
    if kind == "bmp":
        picture.save(buffer, format="BMP")
        return ".bmp", buffer.getvalue()
    if kind == "gif":
        picture.convert("P").save(buffer, format="GIF")
        return ".gif", buffer.getvalue()
    if kind == "grey_png":
        return ".png", png_bytes(picture.convert("L"))
    if kind == "rgba_png":
        return ".png", png_bytes(noise_image(100_000 + index, size, mode="RGBA"))
    if kind == "sixteen_bit_png":
        pixels = rng.integers(0, 65535, size=(size[1], size[0]), dtype=np.uint16)
        return ".png", png_bytes(Image.fromarray(pixels))
    if kind == "cmyk_jpg":
        return ".jpg", jpeg_bytes(picture.convert("CMYK"))
    if kind == "tiff":
        picture.save(buffer, format="TIFF")
        return ".tif", buffer.getvalue()
    if kind == "exif_jpg":
        exif = Image.Exif()
        exif[0x0112] = int(rng.integers(1, 9))
        return ".jpg", jpeg_bytes(picture, exif=exif)
    return ".png", png_bytes(noise_image(100_000 + index, (int(rng.integers(400, 1500)), 16)))  # 25:1 to 94:1


BAD_KINDS = 16


def bad_file(index: int, folder: Path, rng: random.Random, seeds: dict[str, bytes], scratch: Path) -> tuple[Path, str]:
    """Write one bad file of a kind index picks; returns its path and the reason data_prep must give."""
    kind = index % BAD_KINDS
    stem = folder / f"bad_{index:05d}"
    if kind >= 12:
        return _special_file(kind, stem, rng)
    picture = noise_image(200_000 + index, (48, 40))
    if kind == 0:
        path, data, reason = stem.with_suffix(".jpg"), b"", "empty file"
    elif kind == 1:
        full = jpeg_bytes(picture)
        path, data, reason = stem.with_suffix(".jpg"), full[: rng.randint(200, len(full) - 10)], ""
    elif kind == 2:
        full = png_bytes(picture)
        # cut inside the pixel data: a PNG missing only its last bytes (IEND, the zlib trailer) can
        # still decode whole, which makes it a good image, not a bad one
        path, data, reason = stem.with_suffix(".png"), full[: rng.randint(60, len(full) * 3 // 4)], ""
    elif kind == 3:
        path, data, reason = stem.with_suffix(rng.choice([".png", ".jpg", ".gif", ".webp"])), rng.randbytes(
            rng.randint(1, 4096)), ""
    elif kind == 4:
        path, data, reason = stem.with_suffix(".jpg"), b"<!DOCTYPE html><html><body>403 Forbidden</body></html>", \
            "not an image"
    elif kind == 5:
        side = rng.randint(1, 15)
        path, data, reason = stem.with_suffix(".png"), png_bytes(noise_image(index, (side, rng.randint(1, 300)))), \
            "too small"
    elif kind == 6:
        path, data, reason = stem.with_suffix(".png"), bomb_png(), "decompression bomb"
    elif kind == 7:
        path = stem.with_suffix(".jpg")
        os.symlink(path, path)
        return path, "symbolic links"
    elif kind == 8:
        path = stem.with_suffix(".png")
        os.symlink(folder / f"gone_{index}.png", path)
        return path, "missing file"
    elif kind == 9:
        path, data, reason = stem.with_suffix(rng.choice([".txt", ".csv", ".json", ""])), b"notes", \
            "not an image file type"
    elif kind == 11:  # a good image whose name is not UTF-8 (random bytes 0x80-0xff in it): listed, escaped
        raw = os.fsencode(stem) + bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(1, 4))) + b".png"
        with open(raw, "wb") as stream:
            stream.write(png_bytes(picture))
        shown = raw.decode("utf-8", "backslashreplace")
        assert shown != os.fsdecode(raw), "bytes 0x80-0xff alone are never valid UTF-8"
        return Path(shown), "not valid UTF-8"
    else:  # a fuzz-damaged file the image reader itself skips: data_prep must give the same reason
        name = rng.choice(sorted(seeds))
        while True:
            data = mutate(seeds[name], rng)
            status, reason = check_one(scratch, data)
            if status == "skipped":
                break
        path = stem.with_suffix(Path(name).suffix or ".png")
    path.write_bytes(data)
    return path, reason


def _special_file(kind: int, stem: Path, rng: random.Random) -> tuple[Path, str]:
    """A file no reader may open or read to the end: a pipe, a socket, a device link or a huge file."""
    path = stem.with_suffix(rng.choice([".png", ".jpg"]))
    if kind == 12:
        os.mkfifo(path)
        return path, "named pipe (FIFO)"
    if kind == 13:
        with socket.socket(socket.AF_UNIX) as unix_socket:
            unix_socket.bind(str(path))
        return path, "a socket"
    if kind == 14:
        os.symlink(rng.choice(["/dev/zero", "/dev/null", "/dev/urandom"]), path)
        return path, "a character device"
    with path.open("wb") as huge:  # sparse: over data_prep's default max_file_bytes, taking no room
        huge.truncate(rng.randint(200_000_001, 2_000_000_000))
    return path, "too large"
