"""Every pass over images, backend by backend and decoder by decoder, side by side in one run.

1. **Extraction on images in memory**: train's frozen-backbone pass (head input, pooled features and
   the grid-14 patch vectors, as the pipeline keeps them) on the same preprocessed images through
   eager PyTorch fp32 NCHW (the baseline), eager PyTorch channels_last (the project's PyTorch path)
   and ONNX Runtime (``runtime.backend: auto`` on a CPU), each at 1 and 2 threads. Rounds
   interleave the arms; each figure is the median over rounds. Ratios are to the baseline.
2. **Extraction from files**: ``inference.extract_backbone_features`` end to end (read, decode,
   preprocess, run, keep) with ``backend`` torch and onnxruntime and 0-3 decoding workers, so the
   best setting for this machine is measured, not assumed.
3. **Decoding alone**, file to model input, per image on one thread, on camera-like 1280x960 JPEGs,
   300x300 RGB PNGs and 300x300 grayscale PNGs (defects-dev's where present): the way before
   (Pillow to RGB, then torchvision's ToImage, ToDtype and Normalize), the same with grayscale
   kept as one channel until the normalisation broadcasts it (the way of 2026-12-03), the project's
   way now (that, normalised by looking each 8-bit value up in a 256-entry table per channel), and
   the other decoders installed here (simplejpeg, OpenCV, pyspng: not project dependencies,
   measured only where present) with the project's preprocessing. Rounds interleave the arms;
   each figure is the median over rounds (at least 3).

Run it from the repository root:

    python -m benchmarks.extraction_speed              # ~4 min on 2 cores
    python -m benchmarks.extraction_speed --quick      # a smoke run
    python -m benchmarks.extraction_speed --decoders-only   # part 3 alone (~1 min)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import make_images

GRID = 14


def backbone_and_spec():
    from image_classification.backbones import backbone_spec, build_backbone

    spec = backbone_spec("efficientnet_lite0")
    try:
        return build_backbone(spec.name, "imagenet", None).eval(), spec
    except Exception as error:  # no weights here: speed does not depend on their values
        print(f"ImageNet weights unavailable ({str(error).splitlines()[0]}); timing random weights")
        return build_backbone(spec.name, "none", None).eval(), spec


def png_folder(folder: Path, count: int) -> list[str]:
    """``count`` 300x300 PNG crops of scikit-image's photos."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.rocket(), skimage.data.immunohistochemistry()]
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"{index:05d}.png"
        if not path.exists():
            photo = photos[index % len(photos)]
            top, left = rng.integers(0, photo.shape[0] - 300), rng.integers(0, photo.shape[1] - 300)
            Image.fromarray(photo[top : top + 300, left : left + 300]).save(path)
    return sorted(str(path) for path in folder.glob("*.png"))[:count]


def in_memory(backbone, spec, images, rounds: int) -> dict[str, float]:
    """Median images/s of each arm at each thread count (``(name, threads)``), on the same preprocessed images."""
    import torch

    from benchmarks.harness import export_feature_model, onnx_session, torch_features
    from image_classification.fine_patches import tap_blocks

    taps = tap_blocks(backbone, spec.input_size)
    onnx_model = export_feature_model(backbone, spec.input_size, "pooled", GRID)
    sessions = {threads: onnx_session(onnx_model, threads) for threads in (1, 2)}
    channels_last = __import__("copy").deepcopy(backbone).to(memory_format=torch.channels_last)

    def eager(model, memory_format):
        def run(batch):
            with torch.inference_mode():
                torch_features(model, taps, batch.contiguous(memory_format=memory_format), "pooled", GRID)
        return run

    arms = {}
    for threads in (1, 2):
        arms[("torch_nchw", threads)] = eager(backbone, torch.contiguous_format)
        arms[("torch_channels_last", threads)] = eager(channels_last, torch.channels_last)
        arms[("onnxruntime", threads)] = (lambda session: lambda batch: session.run(None, {"images": batch.numpy()}))(
            sessions[threads])
    rates: dict[tuple[str, int], list[float]] = {arm: [] for arm in arms}
    batches = list(images.split(64))
    for _ in range(rounds):
        for (name, threads), run in arms.items():
            torch.set_num_threads(threads)
            run(batches[0][:8])  # warm-up
            started = time.perf_counter()
            for batch in batches:
                run(batch)
            rates[(name, threads)].append(len(images) / (time.perf_counter() - started))
    torch.set_num_threads(os.cpu_count() or 1)
    medians = {arm: statistics.median(values) for arm, values in rates.items()}
    best = {}
    for name in ("torch_nchw", "torch_channels_last", "onnxruntime"):
        threads = max((1, 2), key=lambda t: medians[(name, t)])
        best[name] = medians[(name, threads)]
        print(f"  {name:22s} {medians[(name, 1)]:7.1f} img/s at 1 thread, {medians[(name, 2)]:7.1f} at 2")
    for name, rate in best.items():
        print(f"  best {name:17s} {rate:7.1f} img/s   {rate / best['torch_nchw']:5.2f}x eager NCHW")
    return medians


def from_files(backbone, spec, paths: list[str], workers_list: list[int]) -> list[dict]:
    import torch

    from benchmarks.harness import extract_backbone_features

    reference, rows = None, []
    for backend in ("torch", "onnxruntime"):
        for workers in workers_list:
            started = time.perf_counter()
            out = extract_backbone_features(backbone, paths, spec, torch.device("cpu"), batch_size=64, workers=workers,
                                            patch_grid=GRID, backend=backend)
            rate = len(paths) / (time.perf_counter() - started)
            if reference is None:
                reference = out
            difference = max(float((out[k].float() - reference[k].float()).abs().max()) for k in ("pooled", "head_input"))
            extra = "" if backend == "torch" else f", parity {out['parity']:.1e}, max float16 difference {difference:.1e}"
            print(f"  backend {backend:12s} workers {workers}: {rate:7.1f} img/s (export and parity check included){extra}")
            rows.append({"arm": f"from files, {backend}, {workers} workers", "img_s": rate,
                         **({} if backend == "torch" else {"parity": out["parity"], "float16_difference": difference})})
    return rows


def decoders(jpegs: list[str], pngs: list[str], grays: list[str], count: int, rounds: int) -> list[dict]:
    """ms per image, one thread, from file to the model's input tensor: the way before this change,
    the project's way now, and other decoders with the project's preprocessing; the median of
    ``rounds`` rounds that interleave them."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from image_classification.backbones import backbone_spec
    from image_classification.images import load_rgb
    from image_classification.image_files import ImageLimits, read_bytes
    from image_classification.model import ToModelInput, preprocess_transform

    rows = []
    torch.set_num_threads(1)
    spec = backbone_spec("efficientnet_lite0")
    transform, limits, size = preprocess_transform(spec), ImageLimits(min_side=1), spec.input_size
    resize, lookup = v2.Resize((size, size), antialias=True), ToModelInput(spec.mean, spec.std)
    before = v2.Compose([resize, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(mean=list(spec.mean), std=list(spec.std))])
    candidates = {
        "before: Pillow to RGB, torchvision ToImage/ToDtype/Normalize": lambda path: before(load_rgb(path, limits, size)),
        "grayscale kept as L, normalised arithmetically (2026-12-03)": lambda path: lookup.normalise(
            v2.functional.pil_to_tensor(resize(load_rgb(path, limits, size, keep_gray=True)))),
        "now: Pillow, grayscale kept as L, normalised by table lookup": lambda path: transform(
            load_rgb(path, limits, size, keep_gray=True)),
    }
    try:
        import simplejpeg

        def with_simplejpeg(path):
            if not path.endswith(".jpg"):
                return None
            return transform(Image.fromarray(simplejpeg.decode_jpeg(read_bytes(path, limits), colorspace="RGB",
                                                                    min_height=size, min_width=size)))

        candidates["simplejpeg (libjpeg-turbo, DCT scaling), JPEG only"] = with_simplejpeg
    except ImportError:
        print("  simplejpeg is not installed: left out")
    try:
        import pyspng

        def with_pyspng(path):
            if not path.endswith(".png"):
                return None
            pixels = pyspng.load(read_bytes(path, limits))
            return transform(Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels))

        candidates["pyspng (libspng), PNG only"] = with_pyspng
    except ImportError:
        print("  pyspng is not installed: left out")
    try:
        import cv2

        cv2.setNumThreads(1)

        def with_opencv(path):
            flag = cv2.IMREAD_REDUCED_COLOR_4 if path.endswith(".jpg") else cv2.IMREAD_UNCHANGED
            pixels = cv2.imdecode(np.frombuffer(read_bytes(path, limits), np.uint8), flag)
            pixels = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[..., ::-1])
            return transform(Image.fromarray(pixels))

        candidates["OpenCV imdecode (JPEG at 1/4)"] = with_opencv
    except ImportError:
        print("  OpenCV is not installed: left out")
    for label, paths in (("1280x960 JPEG", jpegs), ("300x300 RGB PNG", pngs), ("300x300 grayscale PNG", grays)):
        print(f"  {label}:")
        reference = candidates[next(iter(candidates))](paths[0])
        arms = {name: decode for name, decode in candidates.items() if decode(paths[0]) is not None}
        timings: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(rounds):  # rounds interleave the arms, so a slow spell of the machine hits them all
            for name, decode in arms.items():
                started = time.perf_counter()
                for path in paths[:count]:
                    decode(path)
                timings[name].append(1000 * (time.perf_counter() - started) / min(count, len(paths)))
        base = statistics.median(timings[next(iter(arms))])
        for name, decode in arms.items():
            difference = float((decode(paths[0]) - reference).abs().max())
            ms = statistics.median(timings[name])
            print(f"    {name:64s} {ms:6.2f} ms/img  {base / ms:5.2f}x   max difference {difference:.1e}")
            rows.append({"arm": f"decoding, {label}, {name}", "ms_per_img": ms, "max_difference": difference})
    torch.set_num_threads(os.cpu_count() or 1)
    return rows


def gray_pngs(workdir: Path, count: int) -> list[str]:
    """defects-dev's 300x300 grayscale photos where present, else grayscale copies of the RGB PNGs."""
    found = sorted(str(path) for path in harness.DEFECTS_DEV.glob("*/*.png"))[:count]
    if found:
        return found
    from PIL import Image

    folder = workdir / "gray"
    folder.mkdir(parents=True, exist_ok=True)
    for path in png_folder(workdir / "png", count):
        target = folder / Path(path).name
        if not target.exists():
            Image.open(path).convert("L").save(target)
    return sorted(str(path) for path in folder.glob("*.png"))[:count]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64 images, 1 round, workers 0 and 2")
    parser.add_argument("--files", default=None, help="a folder whose images (any depth) part 2 reads instead of "
                        "the generated JPEGs, e.g. ../shared/datasets/cifar10-dev")
    parser.add_argument("--decoders-only", action="store_true", help="part 3 alone")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "image_classification_extraction"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 64, 1
    harness.quiet_progress()
    workdir = Path(args.workdir)
    make_images(workdir / "jpeg", args.images, min(args.images, 60))
    jpegs = sorted(str(path) for path in (workdir / "jpeg").glob("*.jpg"))[: args.images]
    pngs = png_folder(workdir / "png", args.images)
    rows = [] if args.decoders_only else extraction(args, jpegs)
    print("\n3. Decoding alone, one thread, per image, file to model input:")
    rows += decoders(jpegs, pngs, gray_pngs(workdir, args.images), min(200, args.images), max(args.rounds, 3))
    harness.write_results(args.results_file, "extraction_speed", rows, args)


def extraction(args: argparse.Namespace, jpegs: list[str]) -> list[dict]:
    """Parts 1 and 2: the backends on images in memory, then the whole pass from the files."""
    import torch

    from benchmarks.harness import ImageFiles

    backbone, spec = backbone_and_spec()
    dataset = ImageFiles(jpegs, spec)
    images = torch.stack([dataset[index][0] for index in range(len(jpegs))])
    print(f"\n1. Extraction on {len(images)} images in memory (efficientnet_lite0, batch 64, patches on grid {GRID}):")
    rates = in_memory(backbone, spec, images, args.rounds)
    files, what = jpegs, "1280x960 JPEGs"
    if args.files:
        found = sorted(str(p) for p in Path(args.files).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        step = max(1, len(found) // args.images)
        files, what = found[::step][: args.images], f"from {args.files}"
    print(f"\n2. Extraction from {len(files)} files ({what}), the whole pass:")
    return ([{"arm": f"in memory, {name}, {threads} thread(s)", "img_s": rate} for (name, threads), rate in rates.items()]
            + from_files(backbone, spec, files, [0, 2] if args.quick else [0, 1, 2, 3]))


if __name__ == "__main__":
    main()
