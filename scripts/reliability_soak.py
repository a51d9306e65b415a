"""The long reliability run: what ``tests/reliability`` checks in seconds, for minutes.

1. Fuzz the image-reading path: random damage to real files of every format for ``--fuzz-seconds``,
   then ``--hypothesis-examples`` examples drawn by hypothesis. Every file must be read or skipped
   with a reason; anything else is a crash.
2. Bad files among thousands of good ones through a whole ``data_prep`` run (KedroSession on a
   scratch project): every good image must be indexed and every bad one listed with its reason.
3. Checkpoint saves killed with SIGKILL at random moments (``--save-kills``): the newest complete
   version must always load, and a half-written file must never appear.
4. Training killed mid-epoch with SIGKILL in a fresh interpreter and resumed (``--train-kills``):
   the result must equal an uninterrupted run's, and two uninterrupted runs must agree.

Prints the counts and exits 1 if anything crashed or was lost. Run from the repository root with
the test tools installed (``pip install -e ".[test]"``):

    python scripts/reliability_soak.py                  # about 5 minutes on 2 busy cores
    python scripts/reliability_soak.py --good 10000 --fuzz-seconds 1800
"""

from __future__ import annotations

import argparse
import io
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # the generators and checkers live with the tests

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from kedro.io.core import Version  # noqa: E402
from PIL import Image  # noqa: E402

from image_classification.datasets import SafetensorsDataset  # noqa: E402
from tests.conftest import bomb_png, jpeg_bytes, noise_image, png_bytes  # noqa: E402
from tests.reliability import train_driver  # noqa: E402
from tests.reliability.conftest import make_project, run_session  # noqa: E402
from tests.reliability.fuzzing import MUTATIONS, apply_mutation, check_one, mutate, seed_files  # noqa: E402

DRIVER = REPO_ROOT / "tests" / "reliability" / "train_driver.py"


class Report:
    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.failures: list[str] = []

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print("FAILURE:", message, flush=True)


# ----------------------------------------------------------------------------- 1. fuzzing


def fuzz(report: Report, seconds: float, hypothesis_examples: int, seed: int, workdir: Path) -> None:
    seeds = seed_files()
    names = sorted(seeds)
    rng = random.Random(seed)
    path = workdir / "fuzzed.bin"
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while time.monotonic() - started < seconds:
            name = rng.choice(names)
            data = mutate(seeds[name], rng)
            status, detail = check_one(path, data)
            report.counts["fuzz iterations (random mutation)"] += 1
            report.counts[f"fuzz outcome: {status}"] += 1
            if status == "crash":
                kept = workdir / f"crash_{report.counts['fuzz outcome: crash']}_{name}"
                kept.write_bytes(data)
                report.fail(f"fuzz: {name} mutated -> {detail} (kept as {kept})")
        if hypothesis_examples:
            _hypothesis_fuzz(report, seeds, hypothesis_examples, path)
    print(f"fuzz: {report.counts['fuzz iterations (random mutation)']} random and "
          f"{report.counts['fuzz iterations (hypothesis)']} hypothesis iterations in "
          f"{time.monotonic() - started:.0f} s", flush=True)


def _hypothesis_fuzz(report: Report, seeds: dict[str, bytes], examples: int, path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    damages = st.lists(st.tuples(st.sampled_from(MUTATIONS), st.floats(0, 1, exclude_max=True),
                                 st.binary(max_size=64), st.integers(1, 64)), min_size=1, max_size=6)

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(name=st.sampled_from(sorted(seeds)), damage=damages)
    def one(name, damage):
        data = seeds[name]
        for step in damage:
            data = apply_mutation(data, *step)
        status, detail = check_one(path, data)
        report.counts["fuzz iterations (hypothesis)"] += 1
        report.counts[f"fuzz outcome: {status}"] += 1
        assert status != "crash", f"{name} after {damage}: {detail}"

    try:
        one()
    except AssertionError as error:
        report.fail(f"hypothesis fuzz: {error}")


# ----------------------------------------------------------------------------- 2. data_prep soak

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


def bad_file(index: int, folder: Path, rng: random.Random, seeds: dict[str, bytes], scratch: Path) -> tuple[Path, str]:
    """Write one bad file of a kind index picks; returns its path and the reason data_prep must give."""
    kind = index % 12
    stem = folder / f"bad_{index:05d}"
    picture = noise_image(200_000 + index, (48, 40))
    if kind == 0:
        path, data, reason = stem.with_suffix(".jpg"), b"", "empty file"
    elif kind == 1:
        full = jpeg_bytes(picture)
        path, data, reason = stem.with_suffix(".jpg"), full[: rng.randint(200, len(full) - 10)], ""
    elif kind == 2:
        full = png_bytes(picture)
        path, data, reason = stem.with_suffix(".png"), full[: rng.randint(60, len(full) - 20)], ""
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


def data_prep_soak(report: Report, good: int, bad: int, workdir: Path, seed: int) -> None:
    started = time.monotonic()
    rng = random.Random(seed)
    seeds = seed_files()
    images = workdir / "images"
    good_paths: set[str] = set()
    for index in range(good):
        label = ("valid", "invalid")[index % 2]
        folder = images / label / f"batch_{index // 500:02d}" / ("deep" if index % 7 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        suffix, data = good_image(index)
        path = folder / f"good_{index:05d}{suffix}"
        path.write_bytes(data)
        good_paths.add(str(path))
    expected_bad: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for index in range(bad):
            folder = images / ("valid", "invalid")[index % 2] / "incoming"
            folder.mkdir(parents=True, exist_ok=True)
            path, reason = bad_file(index, folder, rng, seeds, workdir / "scratch.bin")
            expected_bad[str(path)] = reason
    print(f"data_prep soak: wrote {good} good and {bad} bad files in {time.monotonic() - started:.0f} s", flush=True)

    project = make_project(workdir / "project", {
        "runtime": {"device": "cpu", "threads": 1, "batch_size": 32, "workers": 0},
        "data_prep": {"source": {"kind": "folder_tree", "root": str(images)}},
    })
    run_started = time.monotonic()
    run_session(project, ["data_prep"])
    seconds = time.monotonic() - run_started
    index = pd.read_parquet(_latest(project / "data/03_primary/image_index.parquet"))
    rejected = pd.read_parquet(_latest(project / "data/08_reporting/rejected_images.parquet"))
    reasons = dict(zip(rejected["path"], rejected["reason"]))
    indexed = set(index["path"])
    lost = sorted(good_paths - indexed)
    for path in lost:
        report.fail(f"data_prep lost the good image {path} ({reasons.get(path, 'not listed anywhere')})")
    report.counts["data_prep: good images"] += good
    report.counts["data_prep: good images lost"] += len(lost)
    report.counts["data_prep: bad files"] += bad
    for path, reason in expected_bad.items():
        if path in indexed:
            report.fail(f"data_prep indexed the bad file {path}")
        elif path not in reasons:
            report.fail(f"data_prep dropped the bad file {path} without listing it")
        elif reason not in reasons[path]:
            report.fail(f"data_prep gave {path} the reason {reasons[path]!r}, expected {reason!r}")
        else:
            report.counts["data_prep: bad files skipped with the expected reason"] += 1
    if len(indexed) + len(rejected) != good + bad:
        report.fail(f"data_prep: {len(indexed)} indexed + {len(rejected)} rejected != {good + bad} files")
    print(f"data_prep soak: the run took {seconds:.0f} s ({(good + bad) / seconds:.0f} files/s); "
          f"{len(indexed)} indexed, {len(rejected)} rejected", flush=True)


def _latest(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if (p / path.name).exists())[-1] / path.name


# ----------------------------------------------------------------------------- 3. killed saves


def _save_forever(root: str, state: str, first: int) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    value = first
    while True:
        value += 1
        payload = {"tensors": {"weight": torch.full((2048, 2048), float(value))}, "metadata": {"value": value}}
        SafetensorsDataset(filepath=root, version=Version(None, f"{value:08d}")).save(payload)
        SafetensorsDataset(filepath=state).save(payload)


def killed_saves(report: Report, kills: int, workdir: Path, seed: int) -> None:
    rng = random.Random(seed)
    root, state = workdir / "model.safetensors", workdir / "training_state.safetensors"
    fork = multiprocessing.get_context("fork")
    next_value = 0
    for _ in range(kills):
        child = fork.Process(target=_save_forever, args=(str(root), str(state), next_value), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.05, 1.5))
        mid_save = any(workdir.glob(f".{state.name}.*.tmp")) or any(root.glob(f"*/.{root.name}.*.tmp"))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        report.counts["saves killed (SIGKILL)"] += 1
        report.counts["saves killed while a temporary file was open"] += int(mid_save)
        versions = sorted(p.name for p in root.iterdir()) if root.exists() else []
        next_value = int(versions[-1]) if versions else next_value
        complete = [v for v in versions if (root / v / "model.safetensors").exists()]
        for version in complete:
            loaded = SafetensorsDataset(filepath=str(root), version=Version(version, None)).load()
            if not bool((loaded["tensors"]["weight"] == float(loaded["metadata"]["value"])).all()):
                report.fail(f"checkpoint version {version} is corrupt after a kill")
        if complete:
            latest = SafetensorsDataset(filepath=str(root), version=Version(None, None)).load()
            if latest["metadata"]["value"] != int(complete[-1]):
                report.fail(f"the latest checkpoint is {latest['metadata']['value']}, expected {complete[-1]}")
        if state.exists():
            loaded = SafetensorsDataset(filepath=str(state)).load()
            if not bool((loaded["tensors"]["weight"] == float(loaded["metadata"]["value"])).all()):
                report.fail("the training state is corrupt after a kill")
    print(f"killed saves: {report.counts['saves killed (SIGKILL)']} kills, "
          f"{report.counts['saves killed while a temporary file was open']} of them mid-save", flush=True)


# ----------------------------------------------------------------------------- 4. killed training


def _driver(workdir: Path, *args: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(DRIVER), str(workdir), "--epochs", "4", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _same(left: dict, right: dict) -> bool:
    history = [pd.DataFrame(r["metadata"]["history"]).sort_index(axis=1) for r in (left, right)]
    return history[0].equals(history[1]) and left["tensors"].keys() == right["tensors"].keys() and all(
        torch.equal(t, right["tensors"][k]) for k, t in left["tensors"].items())


def killed_training(report: Report, kills: int, workdir: Path, seed: int) -> None:
    if not kills:
        return
    rng = random.Random(seed)
    results = []
    for run in range(2):  # two uninterrupted runs in fresh interpreters
        if _driver(workdir / f"uninterrupted_{run}").wait() != 0:
            report.fail("an uninterrupted training run failed")
            return
        results.append(SafetensorsDataset(filepath=str(workdir / f"uninterrupted_{run}" / "result.safetensors")).load())
    report.counts["fresh-interpreter runs compared for determinism"] += 2
    if not _same(*results):
        report.fail("two uninterrupted training runs with the same seed differ")
    for attempt in range(kills):
        folder = workdir / f"killed_{attempt}"
        child = _driver(folder, "--seconds-per-batch", "0.15")
        after = rng.randint(1, 3)
        deadline = time.monotonic() + 600
        while (train_driver.state_epoch(folder / "training_state.safetensors") or 0) < after:
            if time.monotonic() > deadline or child.poll() is not None:
                report.fail(f"training never saved epoch {after}")
                child.kill()
                return
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
        report.counts["training processes killed mid-run (SIGKILL)"] += 1
        if _driver(folder).wait() != 0:
            report.fail("the resumed training run failed")
            continue
        resumed = SafetensorsDataset(filepath=str(folder / "result.safetensors")).load()
        if not _same(resumed, results[0]):
            report.fail(f"training resumed after epoch {resumed['metadata']['resumed_after']} differs from an "
                        "uninterrupted run")
        else:
            report.counts["killed training runs resumed to the identical result"] += 1
    print(f"killed training: {report.counts['training processes killed mid-run (SIGKILL)']} kills", flush=True)


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fuzz-seconds", type=float, default=90)
    parser.add_argument("--hypothesis-examples", type=int, default=300)
    parser.add_argument("--good", type=int, default=3000, help="good images in the data_prep run")
    parser.add_argument("--bad", type=int, default=360, help="bad files among them")
    parser.add_argument("--save-kills", type=int, default=40)
    parser.add_argument("--train-kills", type=int, default=1)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards if given")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kedro").setLevel(logging.ERROR)  # one line per killed save is noise here
    torch.set_num_threads(1)
    print(f"reliability soak, seed {args.seed}", flush=True)
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        for name, phase in (("fuzz", lambda d: fuzz(report, args.fuzz_seconds, args.hypothesis_examples, args.seed, d)),
                            ("data_prep", lambda d: data_prep_soak(report, args.good, args.bad, d, args.seed)),
                            ("saves", lambda d: killed_saves(report, args.save_kills, d, args.seed)),
                            ("training", lambda d: killed_training(report, args.train_kills, d, args.seed))):
            folder = workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            try:
                phase(folder)
            except Exception as error:  # noqa: BLE001 - a phase that dies is a finding, reported below
                report.fail(f"{name} phase stopped: {type(error).__name__}: {error}")
    print(f"\n=== reliability soak summary ({time.monotonic() - started:.0f} s, seed {args.seed}) ===")
    for what, count in sorted(report.counts.items()):
        print(f"{what}: {count}")
    print(f"crashes: {report.counts['fuzz outcome: crash']}")
    print(f"good images lost: {report.counts['data_prep: good images lost']}")
    print(f"failures: {len(report.failures)}")
    for failure in report.failures:
        print("  -", failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
