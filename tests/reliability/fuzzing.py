"""Malformed image bytes for the fuzz tests and the soak script: real files of every format the
project reads, and mutations of them (flipped bytes, cuts, insertions, repeated and overwritten
runs, huge declared sizes), the way files get damaged in transfer, on disk or by a hostile sender.

One checker, :func:`check_one`, says what the image-reading path did with one file: read it or
skip it with a reason. Anything else (an exception other than the reported skip, an unreadable
image called readable, a readable one without RGB pixels) is a crash, returned as a message.
:func:`check_artefact` does the same for a damaged feature cache: loaded unchanged, or refused.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from image_classification.artefacts import FeatureCache
from image_classification.datasets import SafetensorsDataset
from image_classification.errors import DataError
from image_classification.images import decode_rgb, inspect_image
from image_classification.image_files import ImageLimits
from image_classification.runtime.loader import ImageFiles
from image_classification.backbones import backbone_spec

from ..conftest import bomb_png, exif_rotated_jpeg, good_files, noise_image

LIMITS = ImageLimits()  # data_prep's defaults: min_side 16, max_pixels 50 M
SPEC = backbone_spec("efficientnet_lite0")


def _encoded(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def seed_files() -> dict[str, bytes]:
    """Valid files of every format and mode the readers accept; the fuzzers start from these."""
    picture = noise_image(40, size=(48, 40))
    files = {f"mode_{name}": data for name, data in good_files().items()}
    files |= {
        "progressive.jpg": _encoded(picture, "JPEG", progressive=True, quality=80),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "interlaced.png": _encoded(picture, "PNG", optimize=True),
        "picture.bmp": _encoded(picture, "BMP"),
        "picture.tif": _encoded(picture, "TIFF", compression="tiff_deflate"),
        "picture.webp": _encoded(picture, "WEBP", quality=70),
        "picture.ppm": _encoded(picture, "PPM"),
        "grey.pgm": _encoded(picture.convert("L"), "PPM"),
        "bomb.png": bomb_png(),
    }
    return files


def _declared_size(data: bytes, width: int, height: int) -> bytes:
    """The same file claiming another size in its header (PNG IHDR or JPEG SOF), checksum left stale."""
    if data.startswith(b"\x89PNG") and len(data) > 24:
        return data[:16] + struct.pack(">II", width, height) + data[24:]
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at != -1 and len(data) > at + 9:
            return data[: at + 5] + struct.pack(">HH", height % 65536, width % 65536) + data[at + 9 :]
    return data


MUTATIONS = ("flip", "cut", "insert", "overwrite", "repeat", "delete", "size", "zero_tail")
SIDES = (0, 1, 2, 15, 16, 17, 7071, 65535, 100_000, 2**31 - 1)


def apply_mutation(data: bytes, kind: str, where: float, payload: bytes, count: int) -> bytes:
    """One damage to ``data``: ``where`` in [0, 1) picks the byte, ``payload`` and ``count``
    (at least 1) give what is inserted or how much is repeated, deleted or overwritten."""
    data = bytearray(data)
    size = len(data)
    at = int(where * size)
    if kind == "flip" and size:
        data[at] ^= 1 << (count % 8)
    elif kind == "cut":
        del data[at:]
    elif kind == "insert":
        data[at:at] = payload or b"\x00"
    elif kind == "overwrite" and size:
        chunk = (payload or b"\xff") * count
        data[at : at + len(chunk)] = chunk[: size - at]
    elif kind == "repeat" and size:
        data[at:at] = data[at : at + 16 * count] * count
    elif kind == "delete" and size:
        del data[at : at + 8 * count]
    elif kind == "size":
        width, height = SIDES[count % len(SIDES)], SIDES[(count * 7 + len(payload)) % len(SIDES)]
        data = bytearray(_declared_size(bytes(data), width, height))
    elif kind == "zero_tail" and size:
        data[at:] = bytes(size - at)
    return bytes(data)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Apply 1-4 random damages to ``data``."""
    for _ in range(rng.randint(1, 4)):
        data = apply_mutation(data, rng.choice(MUTATIONS), rng.random(), rng.randbytes(rng.randint(0, 64)),
                              rng.randint(1, 64))
    return data


def check_one(path: Path, data: bytes) -> tuple[str, str]:
    """Run ``data`` (written to ``path``) through every image reader of the project.

    Returns:
        ("read", "") or ("skipped", reason) on the expected behaviour, ("crash", what went wrong)
        otherwise.
    """
    path.write_bytes(data)
    try:
        row = inspect_image(str(path), LIMITS)  # data_prep: never raises for a bad image
    except Exception as error:  # noqa: BLE001 - anything escaping is the bug being looked for
        return "crash", f"inspect_image raised {type(error).__name__}: {error}"
    if row["ok"] == bool(row["reason"]):
        return "crash", f"inspect_image said ok={row['ok']} with reason {row['reason']!r}"
    if row["ok"]:
        if min(row["width"], row["height"]) < LIMITS.min_side or len(row["phash"]) != 16:
            return "crash", f"inspect_image accepted a {row['width']}x{row['height']} image, phash {row['phash']!r}"
        try:
            image, _ = decode_rgb(data, LIMITS)
        except Exception as error:  # noqa: BLE001
            return "crash", f"decode_rgb failed on an image inspect_image accepted: {error}"
        if image.mode != "RGB" or np.asarray(image).shape[2] != 3:
            return "crash", f"decode_rgb gave mode {image.mode}"
    try:  # train, evaluate, zero_shot and predict read through ImageFiles
        tensor, reason = ImageFiles([str(path)], SPEC)[0]
    except Exception as error:  # noqa: BLE001
        return "crash", f"ImageFiles raised {type(error).__name__}: {error}"
    if tuple(tensor.shape) != (3, SPEC.input_size, SPEC.input_size) or not bool(tensor.isfinite().all()):
        finite = bool(tensor.isfinite().all())
        return "crash", f"ImageFiles gave a tensor of shape {tuple(tensor.shape)} (finite: {finite})"
    if row["ok"] and reason:
        return "crash", f"data_prep accepted the file but the model's reader refused it: {reason}"
    return ("read", "") if row["ok"] else ("skipped", row["reason"])


def check_artefact(path: Path, data: bytes, original: FeatureCache, mapped: bool) -> tuple[str, str]:
    """Load ``data`` (written to ``path``) as the later stages load the feature cache and read all of it.

    Returns:
        ("same", "") when it reads back equal to ``original`` (a change the checksums need not see, such
        as a space in the header's padding), ("refused", message) for a :class:`DataError`, and
        ("crash", what went wrong) for different contents or any other exception.
    """
    path.write_bytes(data)
    try:
        cache = FeatureCache.from_payload(SafetensorsDataset(filepath=str(path),
                                                             load_args={"mmap": mapped}).load())
        tensors = {name: cache.tensors[name] for name in cache.tensors}
    except DataError as error:
        return "refused", str(error)
    except Exception as error:  # noqa: BLE001 - anything else escaping is the bug being looked for
        return "crash", f"{type(error).__name__}: {error}"
    same = (cache.tensors.keys() == original.tensors.keys()
            and all(tensor.dtype == original.tensors[name].dtype and torch.equal(tensor, original.tensors[name])
                    for name, tensor in tensors.items())
            and {**cache.__dict__, "tensors": None} == {**original.__dict__, "tensors": None})
    return ("same", "") if same else ("crash", "loaded without a word, but not what was saved")
