"""Shared fixtures: tiny generated images, good and bad, made by the tests themselves."""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from kedro.io import MemoryDataset
from omegaconf import OmegaConf
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CIFAR_DEV = SHARED / "datasets" / "cifar10-dev"
MOBILENET_V2_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_coral_tflite.pth"


def noise_image(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> Image.Image:
    """A random picture; different seeds give pictures far apart in perceptual hash."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def jpeg_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save_args)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 60x30 landscape JPEG whose EXIF orientation (6) says: turn 90 degrees to view."""
    image = noise_image(7, size=(60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(image, exif=exif)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png() -> bytes:
    """A file of a few dozen bytes that declares 30000x30000 pixels (900 megapixels)."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _first_part(data: bytes) -> bytes:
    """The first two thirds of a file: a complete header, then the data stops."""
    return data[: len(data) * 2 // 3]


BAD_FILES = {
    "zero_bytes.jpg": lambda: b"",
    "truncated.jpg": lambda: _first_part(jpeg_bytes(noise_image(1, (64, 64)))),
    "truncated.png": lambda: _first_part(png_bytes(noise_image(2, (64, 64)))),
    "random_bytes.png": lambda: np.random.default_rng(3).bytes(2048),
    "page.jpg": lambda: b"<!DOCTYPE html><html><body>Not found</body></html>",
    "tiny.png": lambda: png_bytes(noise_image(4, (1, 1))),
    "sliver.png": lambda: png_bytes(noise_image(5, (400, 4))),
    "bomb.png": bomb_png,
}


def good_files() -> dict[str, bytes]:
    """Images of every mode a user may bring, each one of which must decode to RGB."""
    palette = noise_image(10).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    sixteen = Image.fromarray(np.arange(32 * 40, dtype=np.uint16).reshape(32, 40) * 50)
    assert sixteen.mode == "I;16"
    frames = [noise_image(11 + i).convert("P") for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    return {
        "rgb.jpg": jpeg_bytes(noise_image(20)),
        "grey.png": png_bytes(noise_image(21, mode="L")),
        "rgba.png": png_bytes(noise_image(22, mode="RGBA")),
        "palette_transparent.png": png_bytes(palette),
        "sixteen_bit.png": png_bytes(sixteen),
        "cmyk.jpg": jpeg_bytes(noise_image(23).convert("CMYK")),
        "animated.gif": animated.getvalue(),
        "exif_rotated.jpg": exif_rotated_jpeg(),
    }


def cli_params(text: str) -> dict:
    """``--params`` as ``kedro run`` parses it: dotted keys, values typed by YAML rules."""
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(filter(None, text.split(",")))))


def write_files(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


@pytest.fixture
def bad_image_folder(tmp_path: Path) -> Path:
    """A folder holding every kind of bad file, a symlink loop and a dangling link."""
    folder = tmp_path / "bad"
    write_files(folder, {name: make() for name, make in BAD_FILES.items()})
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    os.symlink(folder / "deleted_after_indexing.jpg", folder / "dangling.jpg")
    return folder


def make_folder_tree(root: Path, valid: int, invalid: int, unseen: dict[str, int] | None = None) -> Path:
    """``root/valid``, ``root/invalid`` and ``root/unseen/<kind>`` of distinct random images."""
    seed = 1000
    for label, count in (("valid", valid), ("invalid", invalid)):
        for index in range(count):
            seed += 1
            write_files(root / label, {f"{label}_{index:03d}.png": png_bytes(noise_image(seed))})
    for kind, count in (unseen or {}).items():
        for index in range(count):
            seed += 1
            write_files(root / "unseen" / kind, {f"{kind}_{index:03d}.png": png_bytes(noise_image(seed))})
    return root


DEMO_PIPELINES = "data_prep,train,score,evaluate,embedding_analysis,zero_shot"
# Two epochs and fewer resamples: every output is written, nobody reads its numbers. One thread and no
# decoding workers are faster than two threads spin-waiting on CPUs shared with other work.
DEMO_PARAMS = "train.epochs=2,evaluate.bootstrap_samples=100,runtime.threads=1,runtime.workers=0"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A scratch copy of the project after one short ``kedro run`` of the demo (predict left out),
    shared by the tests that read a run's outputs: kedro viz and the results notebook."""
    project = tmp_path_factory.mktemp("demo_run")
    shutil.copytree(REPO_ROOT / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()  # a developer's conf/local stays out
    for item in ("pyproject.toml", ".telemetry"):
        shutil.copy(REPO_ROOT / item, project / item)
    (project / "src").mkdir()  # Kedro wants the folder; the package itself is installed
    command = [sys.executable, "-m", "kedro", "run", "--pipelines", DEMO_PIPELINES, "--params", DEMO_PARAMS]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=1800,
                            env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    (project / "run_output.txt").write_text(result.stdout + result.stderr)  # what the user saw (the run summary)
    return project


def base_catalog_config(pattern: str = "catalog*.yml") -> dict[str, dict]:
    """Every entry and dataset factory of conf/base/catalog*.yml (or the files ``pattern`` names), as
    Kedro reads them: ``${globals:...}`` filled in from conf/base/globals.yml."""
    import yaml

    settings = yaml.safe_load((REPO_ROOT / "conf" / "base" / "globals.yml").read_text())
    config: dict[str, dict] = {}
    for path in sorted((REPO_ROOT / "conf" / "base").glob(pattern)):
        text = path.read_text()
        for key, value in settings.items():
            text = text.replace("${globals:%s}" % key, str(value))
        config.update(yaml.safe_load(text) or {})
    return {name: entry for name, entry in config.items() if not name.startswith("_")}


def catalog_entry(name: str) -> dict | None:
    """The configuration Kedro gives dataset ``name``: its explicit entry, or the dataset factory it
    matches with the placeholders filled in; None when it is an in-memory dataset."""
    from kedro.io import DataCatalog

    config = base_catalog_config()
    if name in config:
        return config[name]
    resolved = DataCatalog.from_config(config).config_resolver.resolve_pattern(name)
    # Kedro's own catch-all pattern makes every other name a MemoryDataset: not an entry
    return None if "MemoryDataset" in str(resolved.get("type", "MemoryDataset")) else resolved


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so a test can read intermediate outputs."""

    def _release(self) -> None:
        pass


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is faster than two spin-waiting on CPUs shared with other work.
    Use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resealed_operating_point(payload: dict, **changes) -> dict:
    """``operating_point.json`` as evaluate would have saved it with ``changes``: its checksum made again
    (an edited record that keeps the old one is refused as damaged)."""
    from image_classification.operating_point import OperatingPoint
    from image_classification.checksums import CONTENT_SHA256

    record = {key: value for key, value in payload.items() if key != CONTENT_SHA256} | changes
    return OperatingPoint.from_payload(record).to_payload()
