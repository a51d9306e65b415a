"""What a large 16-bit image costs to check and convert: the whole-image float conversion before issue 41
against the conversion a band of rows at a time now, side by side, each in a fresh process.

A smooth 16-bit grayscale PNG (``--side`` pixels square, 7000 by default: a small file that decodes to
98 MB) is written once. Per arm and round, one process runs ``check`` (data_prep's ``inspect_image`` on
the file: read, decode, convert to 8-bit gray, perceptual hash) and another ``convert`` (the conversion
alone, ``_to_rgb`` on the decoded image, to gray and to RGB); each reports its wall seconds, the peak
resident memory the call added (VmHWM after less VmHWM before) and, for ``convert``, the peak memory
tracemalloc saw (numpy's and Python's allocations: not Pillow's own pixel buffers). Both arms' 8-bit
pixels must be the same.

    python -m benchmarks.image_conversion               # 7000 x 7000, 3 rounds
    python -m benchmarks.image_conversion --side 3000 --rounds 1
"""

from __future__ import annotations

import hashlib
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks import harness

ARMS = ("old", "new")


def old_stretch_to_gray(image):
    """image_classification.images' 16-bit conversion before issue 41 (commit 4d52fb4): whole-image float64."""
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    return Image.fromarray(scaled.astype(np.uint8))


def write_png(path: Path, side: int) -> None:
    """A smooth 16-bit gradient with a little noise: compresses to a small file, decodes to 2 bytes a pixel."""
    from PIL import Image

    rows = np.linspace(0, 65535, side).astype(np.uint16)
    pixels = np.add.outer(np.arange(side, dtype=np.uint16) // 64, rows).astype("<u2")
    Image.frombytes("I;16", (side, side), pixels.tobytes()).save(path, format="PNG", compress_level=9)


def measure(path: str, arm: str, entry: str) -> None:
    """One child process: check or convert the PNG the ``arm`` way; print seconds, peak MiB, traced MiB, digest."""
    from PIL import Image

    from image_classification import images

    if arm == "old":
        images._stretch_to_gray = old_stretch_to_gray
    limits = images.ImageLimits()
    traced = float("nan")
    if entry == "check":
        before, started = harness.peak_rss_mib(), time.perf_counter()
        row = images.inspect_image(path, limits)
        seconds, peak = time.perf_counter() - started, harness.peak_rss_mib() - before
        assert row["ok"], row["reason"]
        digest = row["phash"]
    else:
        with Image.open(path) as image:
            image.load()
            before, started = harness.peak_rss_mib(), time.perf_counter()
            gray = images._to_rgb(image, keep_gray=True)
            images._to_rgb(image)  # and to RGB, as train and predict read it
            seconds, peak = time.perf_counter() - started, harness.peak_rss_mib() - before
            tracemalloc.start()
            images._to_rgb(image, keep_gray=True)
            traced = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        digest = hashlib.sha256(gray.tobytes()).hexdigest()[:12]
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "traced_mib": traced, "digest": digest}))


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    harness.child_option(parser, "PATH", "ARM", "ENTRY")
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.child:
        return measure(*args.child)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sixteen_bit.png"
        write_png(path, args.side)
        print(f"{args.side} x {args.side} 16-bit PNG ({path.stat().st_size / 1024:.0f} KB on disk, "
              f"{args.side**2 * 2 / 2**20:.0f} MiB decoded), {args.rounds} interleaved rounds, medians "
              f"({harness.cpu_model()}):")
        print(f"{'entry':8s} {'arm':4s} {'seconds':>8s} {'peak MiB':>9s} {'traced MiB':>11s}")
        for entry in ("check", "convert"):
            found = {arm: [] for arm in ARMS}
            for _ in range(args.rounds):
                for arm in ARMS:
                    found[arm].append(harness.in_child("image_conversion", path, arm, entry))
            for arm, results in found.items():
                median = {key: statistics.median(result[key] for result in results)
                          for key in ("seconds", "peak_mib", "traced_mib")}
                print(f"{entry:8s} {arm:4s} {median['seconds']:8.2f} {median['peak_mib']:9.0f} "
                      f"{median['traced_mib']:11.0f}")
                rows.append({"arm": f"{entry}, {arm}", "side": args.side, **median})
            if len({results[-1]["digest"] for results in found.values()}) > 1:
                print(f"  the arms' 8-bit pixels differ in {entry}")
    harness.write_results(args.results_file, "image_conversion", rows, args)


if __name__ == "__main__":
    main()
