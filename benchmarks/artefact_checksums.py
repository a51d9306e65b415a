"""What checking the feature cache's checksums costs each later stage: unchecked against checked, read
whole and memory-mapped, side by side.

Every artefact a later stage trusts carries the sha256 of each tensor (``SafetensorsDataset``); a load
checks them, a mapped one each tensor the first time it is read. This benchmark writes a feature cache
of the pipeline's shapes (float16 random values: ``pooled``, ``head_input`` and ``patches``, as in
``feature_cache_mmap``) twice, once with checksums and once without (as files saved before them load,
unchecked), and for each way of loading (read whole or mapped, unchecked or checked) and each thing a
stage reads (one tensor through the dataset, all three, or the pooled features through ``FeatureCache``
as zero_shot and embedding_analysis read them) runs one fresh process that loads the cache and sums
what it reads. Per row: load s, use s and the peak resident memory above what the process held before
loading; rounds interleaved, medians. The files are in the page cache. It also times the save itself
and the checksums' part of it, and the hashes the standard library offers, in MiB/s.

    python -m benchmarks.artefact_checksums                  # 20,000 images (2 GB), 3 rounds (~20 min on 2 cores)
    python -m benchmarks.artefact_checksums --images 2000 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from benchmarks import harness
from image_classification.artefacts import FeatureCache
from image_classification.datasets import SafetensorsDataset
from image_classification.datasets.safetensors_checks import checksums_entry

WAYS = ("read, unchecked", "read, checked", "mmap, unchecked", "mmap, checked")
USES = ("pooled", "head_input", "patches", "all", "FeatureCache.pooled")
HASHES = ("sha256", "blake2b", "sha1", "md5")


def load_and_use(path: str, way: str, use: str) -> None:
    """One child process: load the cache ``way``, read ``use``; print load s, use s, extra peak MiB."""
    logging.disable(logging.WARNING)  # the unchecked file warns that it predates checksums
    file = path if way.endswith(", checked") else f"{path}.unchecked"
    dataset = SafetensorsDataset(filepath=file, load_args={"mmap": True} if way.startswith("mmap") else None)
    before = harness.peak_rss_mib()
    start = time.perf_counter()
    payload = dataset.load()
    loaded = time.perf_counter()
    if use == "FeatureCache.pooled":
        read = [FeatureCache.from_payload(payload).pooled]
    else:
        read = [payload["tensors"][name] for name in (("pooled", "head_input", "patches") if use == "all" else (use,))]
    total = sum(float(tensor.sum(dtype=torch.float32)) for tensor in read)
    used = time.perf_counter()
    print(f"{loaded - start:.4f} {used - loaded:.4f} {harness.peak_rss_mib() - before:.1f} {total:.3e}")


def write_caches(path: str, images: int) -> dict[str, float]:
    """The cache with checksums at ``path`` and without at ``path.unchecked``; seconds the save took, and
    how many of them computing the checksums takes."""
    generator = torch.Generator().manual_seed(0)
    tensors = {"pooled": torch.randn(images, 1280, generator=generator).half(),
               "head_input": torch.randn(images, 1280, 4, 4, generator=generator).half(),
               "patches": torch.randn(images, 196, 152, generator=generator).half()}
    metadata = {"backbone": "efficientnet_lite0", "weights": "imagenet", "head_input": "pooled",
                "paths": [f"/images/{i}.jpg" for i in range(images)], "sha256": ["0" * 64] * images,
                "errors": [""] * images}
    started = time.perf_counter()
    SafetensorsDataset(filepath=path).save({"tensors": tensors, "metadata": metadata})
    saved = time.perf_counter() - started
    started = time.perf_counter()
    checksums_entry(tensors, json.dumps(metadata, sort_keys=True))  # what the save above spent on checksums
    checksums = time.perf_counter() - started
    save_file(tensors, f"{path}.unchecked", metadata={"image_classification": json.dumps(metadata, sort_keys=True)})
    return {"save s (the dataset's, fsync included)": saved, "of which checksums s": checksums}


def hash_speeds(mib: int = 256) -> dict[str, float]:
    """MiB/s of each standard-library hash over ``mib`` MiB in memory, on one core."""
    data = os.urandom(mib * 2**20)
    speeds = {}
    for name in HASHES:
        started = time.perf_counter()
        hashlib.new(name, data).digest()
        speeds[name] = mib / (time.perf_counter() - started)
    return speeds


def measure_all(path: str, rounds: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Medians of (load s, use s, peak MiB) per (use, way), one fresh process each, rounds interleaved."""
    found: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for _ in range(rounds):
        for use in USES:
            for way in WAYS:
                line = subprocess.run([sys.executable, "-m", "benchmarks.artefact_checksums", "--child", path, way,
                                       use], check=True, capture_output=True, text=True).stdout.split()
                found.setdefault((use, way), []).append(tuple(float(value) for value in line[:3]))
    return {key: tuple(statistics.median(column) for column in zip(*values)) for key, values in found.items()}


def report(figures: dict, saves: dict[str, float], speeds: dict[str, float]) -> list[dict]:
    """Print the table; return its rows for the results file."""
    print(f"{'reads':20s} {'way':16s} {'load s':>8s} {'use s':>8s} {'load+use':>9s} {'peak MiB':>9s}")
    rows = []
    for (use, way), (load, use_s, peak) in figures.items():
        print(f"{use:20s} {way:16s} {load:8.3f} {use_s:8.3f} {load + use_s:9.3f} {peak:9.0f}")
        rows.append({"arm": f"{use}, {way}", "load_s": load, "use_s": use_s, "load_use_s": load + use_s,
                     "peak_mib": peak})
    for name, seconds in saves.items():
        print(f"{name}: {seconds:.2f}")
        rows.append({"arm": name, "seconds": seconds})
    print("hashes, MiB/s on one core: " + ", ".join(f"{name} {speed:.0f}" for name, speed in speeds.items()))
    rows += [{"arm": f"hash {name}", "mib_per_s": speed} for name, speed in speeds.items()]
    return rows


def measure_caches(images: int, rounds: int) -> tuple[int, dict, dict[str, float]]:
    """The cache's size in bytes, the figures of every (use, way) and the seconds of both saves."""
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "backbone_features.safetensors")
        saves = write_caches(path, images)
        for file in (path, f"{path}.unchecked"):
            Path(file).read_bytes()  # into the page cache for every way
        return Path(path).stat().st_size, measure_all(path, rounds), saves


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("PATH", "WAY", "USE"), help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=20000, help="images in the cache (default 20,000: 2 GB)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per row (the median is shown)")
    args = parser.parse_args(argv)
    if args.child:
        return load_and_use(*args.child)
    size, figures, saves = measure_caches(args.images, args.rounds)
    print(f"feature cache of {args.images:,} images ({size / 2**20:.0f} MiB), {args.rounds} rounds, medians")
    rows = report(figures, saves, hash_speeds())
    harness.write_results(args.results_file, "artefact_checksums", rows, args)
    return None


if __name__ == "__main__":
    main()
