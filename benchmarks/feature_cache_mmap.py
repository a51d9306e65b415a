"""What memory-mapping the feature cache saves each later stage: read whole against mapped, side by side.

``backbone_features`` is loaded by every stage after train (the head's training, the score pass,
evaluate's candidates, zero_shot, embedding_analysis), and each reads only some of its tensors:
``pooled`` (1280 values per image), ``head_input`` (the head's 4x4 grid, 20,480) or ``patches``
(14 x 14 x 152). The catalog loads it with ``load_args: {mmap: true}``; this benchmark writes a cache
of the pipeline's shapes (float16, random values) through ``SafetensorsDataset`` and, for each way of
loading it (``read``: the whole file read into memory, as without the option; ``mmap``) and each
thing a stage reads (one tensor, or all three summed), runs one fresh process that loads the cache
with the dataset and sums what it reads in float32. Per row: the time ``load`` took, the time to
use the tensors, and the peak resident memory of the process (VmHWM) above what it held before
loading; rounds interleaved, medians. The file is in the page cache for both ways (it was just
written, and each process reads it once before timing), so the times compare the loading itself,
not the disk.

    python -m benchmarks.feature_cache_mmap                 # 5,000 images (0.5 GB), 3 rounds (~1 min)
    python -m benchmarks.feature_cache_mmap --images 20000  # 2 GB
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from image_classification.datasets import SafetensorsDataset

USES = ("pooled", "head_input", "patches", "all")


def measure(path: str, way: str, use: str) -> None:
    """One child process: load the cache ``way`` and read ``use``; print load s, use s, extra peak MiB."""
    dataset = SafetensorsDataset(filepath=path, load_args={"mmap": True} if way == "mmap" else None)
    before = harness.peak_rss_mib()
    start = time.perf_counter()
    tensors = dataset.load()["tensors"]
    loaded = time.perf_counter()
    names = ("pooled", "head_input", "patches") if use == "all" else (use,)
    total = sum(float(tensors[name].sum(dtype=torch.float32)) for name in names)
    used = time.perf_counter()
    print(f"{loaded - start:.4f} {used - loaded:.4f} {harness.peak_rss_mib() - before:.1f} {total:.3e}")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "WAY", "USE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(*args.child)
        return
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "backbone_features.safetensors")
        n = args.images
        generator = torch.Generator().manual_seed(0)
        tensors = {"pooled": torch.randn(n, 1280, generator=generator).half(),
                   "head_input": torch.randn(n, 1280, 4, 4, generator=generator).half(),
                   "patches": torch.randn(n, 196, 152, generator=generator).half()}
        SafetensorsDataset(filepath=path).save({"tensors": tensors, "metadata": {"images": n}})
        del tensors
        size = Path(path).stat().st_size
        Path(path).read_bytes()  # into the page cache for both ways
        found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(args.rounds):
            for use in USES:
                for way in ("read", "mmap"):
                    line = subprocess.run([sys.executable, "-m", "benchmarks.feature_cache_mmap", "--child", path, way,
                                           use], check=True, capture_output=True, text=True).stdout.split()
                    found.setdefault((use, way), []).append(tuple(float(value) for value in line[:3]))
    print(f"feature cache of {n:,} images ({size / 2**20:.0f} MiB: pooled, head_input, patches in float16), "
          f"{args.rounds} rounds, medians")
    print(f"{'reads':11s} {'way':5s} {'load s':>8s} {'use s':>8s} {'load+use':>9s} {'peak MiB':>9s}")
    results = []
    for use in USES:
        rows = {}
        for way in ("read", "mmap"):
            load, use_s, peak = (statistics.median(column) for column in zip(*found[(use, way)]))
            rows[way] = (load + use_s, peak)
            print(f"{use:11s} {way:5s} {load:8.3f} {use_s:8.3f} {load + use_s:9.3f} {peak:9.0f}")
            results.append({"arm": f"{use}, {way}", "load_s": load, "use_s": use_s, "load_use_s": load + use_s,
                            "peak_mib": peak})
        print(f"{'':11s} read/mmap: time {rows['read'][0] / rows['mmap'][0]:.1f}x, "
              f"peak memory {rows['read'][1] / max(rows['mmap'][1], 1):.1f}x")
    harness.write_results(args.results_file, "feature_cache_mmap", results, args)


if __name__ == "__main__":
    main()
