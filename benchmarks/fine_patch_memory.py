"""What evaluate holds in memory for the fine patch vectors: copied split by split, or viewed in the cache.

The fine patch vectors (docs/decisions/0038) take 100,352 bytes per image in the feature cache, which
the catalog memory-maps. evaluate splits the cache into train, validation and test
(``Features.take``), fits the patch Gaussian on the valid training images and scores validation and
test. Copying each split's rows (what ``take`` did) puts every image's fine vectors in memory, and the
fit's selection of the valid ones copies those again; a view (``LazyRows``) reads 256 images at a time
from the mapped file. This benchmark writes a cache of the pipeline's shape (float16, random values)
through ``SafetensorsDataset``, then for each way runs one fresh process that loads it mapped, splits
70 / 20 / 10, fits ``PatchGaussianScorer.of_valid`` and scores validation and test. Per row: seconds,
peak resident memory (VmHWM) above what the process held before loading (it counts the pages of the
mapped file the process read, about the file's size in both ways, which the kernel can drop), the
anonymous memory still held at the end (the copies, which it cannot), and the sum of the test scores
(the same in both ways, or the view changed an answer). Rounds interleaved, medians.

    python -m benchmarks.fine_patch_memory                 # 5,000 images (0.5 GB), 3 rounds (~2 min)
    python -m benchmarks.fine_patch_memory --images 20000  # 2 GB
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from image_classification.datasets import SafetensorsDataset
from image_classification.scorers.base import Features
from image_classification.scorers.patch_gaussian import PatchGaussianScorer

WAYS = ("copied", "viewed")
SIDE, CHANNELS, GRID = 28, 64, 14  # EfficientNet-Lite0 at 224 px


def measure(path: str, way: str) -> dict:
    """One child process: load the cache mapped, split it, fit and score the patch Gaussian ``way``."""
    dataset = SafetensorsDataset(filepath=path, load_args={"mmap": True})
    before = harness.peak_rss_mib()
    anon_before = harness.anonymous_mib()
    start = time.perf_counter()
    fine = dataset.load()["tensors"]["fine_patches"]
    order = np.random.default_rng(0).permutation(len(fine))
    cut = np.cumsum([int(0.7 * len(fine)), int(0.2 * len(fine))])
    parts = dict(zip(("train", "val", "test"), np.split(order, cut)))
    valid = np.random.default_rng(1).random(len(parts["train"])) < 0.6
    if way == "copied":  # as Features.take did before the view: each split's rows gathered into memory
        split = {part: fine[torch.from_numpy(rows)] for part, rows in parts.items()}
        taken = {part: Features(fine_patches=values) for part, values in split.items()}
        valid_fine = taken["train"].fine_patches[torch.from_numpy(np.flatnonzero(valid))]
    else:
        features = Features(fine_patches=fine)
        taken = {part: features.take(rows) for part, rows in parts.items()}
        valid_fine = taken["train"].fine_patches[np.flatnonzero(valid)]
    scorer = PatchGaussianScorer.of_valid(valid_fine, GRID)
    scorer.score_samples(taken["val"])
    test = scorer.score_samples(taken["test"])
    return {"seconds": time.perf_counter() - start, "peak_mib": harness.peak_rss_mib() - before,
            "anon_mib": harness.anonymous_mib() - anon_before, "test_sum": float(np.sum(test))}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    harness.child_option(parser, "PATH", "WAY")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(*args.child)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "backbone_features.safetensors")
        generator = torch.Generator().manual_seed(0)
        fine = torch.randn(args.images, SIDE * SIDE, CHANNELS, generator=generator).half()
        SafetensorsDataset(filepath=path).save({"tensors": {"fine_patches": fine}, "metadata": {"images": args.images}})
        del fine
        size = Path(path).stat().st_size
        Path(path).read_bytes()  # into the page cache for both ways
        found: dict[str, list[dict]] = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                found[way].append(harness.in_child("fine_patch_memory", path, way))
    print(f"fine patch vectors of {args.images:,} images ({size / 2**20:.0f} MiB, float16, mapped), split 70/20/10, "
          f"patch Gaussian fitted and scored; {args.rounds} rounds, medians")
    print(f"{'way':7s} {'seconds':>8s} {'peak MiB':>9s} {'held MiB':>9s} {'test scores sum':>16s}")
    results, medians = [], {}
    for way in WAYS:
        seconds = statistics.median(row["seconds"] for row in found[way])
        peak = statistics.median(row["peak_mib"] for row in found[way])
        held = statistics.median(row["anon_mib"] for row in found[way])
        total = found[way][0]["test_sum"]
        medians[way] = (seconds, peak)
        print(f"{way:7s} {seconds:8.2f} {peak:9.0f} {held:9.0f} {total:16.6g}")
        results.append({"arm": way, "images": args.images, "seconds": seconds, "peak_mib": peak, "held_mib": held,
                        "test_sum": total})
    print(f"copied/viewed: peak memory {medians['copied'][1] / max(medians['viewed'][1], 1):.1f}x, "
          f"time {medians['copied'][0] / medians['viewed'][0]:.2f}x; same test scores: "
          f"{found['copied'][0]['test_sum'] == found['viewed'][0]['test_sum']}")
    harness.write_results(args.results_file, "fine_patch_memory", results, args)


if __name__ == "__main__":
    main()
