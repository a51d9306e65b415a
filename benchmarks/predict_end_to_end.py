"""predict from image files to decisions, against the physical floor, and its memory at two sizes.

Speed: the predict pipeline's own nodes (list_prediction_images, export_onnx_model, check_onnx_parity,
predict_images) over a folder of generated camera-like JPEGs, in images per second, beside:

- the floor: the same backend, batch size and threads scoring the same images already decoded
  and preprocessed in memory (one forward pass per batch, nothing else);
- decoding alone: the same DataLoader and workers reading the same files, no model.

The overhead is how much longer predict takes per image than the floor. The export (once per
run) and the parity check are timed apart.

Memory: predict_images over N images for each N given (e.g. 5,000 and 20,000), each in a fresh
process, reporting the peak resident memory of that process (VmHWM) and of its decoding workers
(forked from it, so they share its pages). Streaming keeps only a few numbers per image, so the
peaks should barely move while N grows fourfold.

Run it from the repository root:

    python benchmarks/predict_end_to_end.py                                 # speed over 2,000 images
    python benchmarks/predict_end_to_end.py --images 0 --memory 5000 20000  # memory only (~30+ min on 2 cores)
    python benchmarks/predict_end_to_end.py --images 500 --memory 500 2000  # a quick run of both

The model is efficientnet_lite0 with its ImageNet weights and an untrained head (speed and memory
do not depend on the head's values); the anomaly detector is a kNN on 1,000 pooled-feature
vectors, like zero_shot's default. Images are crops of scikit-image's photos at 1280x960 with
grain, quality 90; past ``--distinct`` files the rest are hard links, which predict reads and
decodes like any other file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, distinct: int, size: tuple[int, int] = (1280, 960)) -> None:
    """``count`` JPEGs in ``folder`` (kept between calls): ``distinct`` generated ones, then hard links."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), skimage.data.hubble_deep_field()]
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"image_{index:06d}.jpg"
        if path.exists():
            continue
        if index >= distinct:
            os.link(folder / f"image_{index % distinct:06d}.jpg", path)
            continue
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        top, left = rng.integers(0, height // 4), rng.integers(0, width // 4)
        crop = Image.fromarray(photo[top : top + height * 3 // 4, left : left + width * 3 // 4])
        pixels = np.asarray(crop.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def image_folder(workdir: Path, count: int, distinct: int) -> Path:
    """A folder holding exactly ``count`` images (hard links into the shared pool of images)."""
    pool = workdir / "images"
    make_images(pool, count, distinct)
    folder = workdir / f"images_{count}"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        link = folder / f"image_{index:06d}.jpg"
        if not link.exists():
            os.link(pool / link.name, link)
    return folder


def prepare_inputs(workdir: Path) -> float:
    """Write a checkpoint, its ONNX export and a detector to ``workdir``; return the export's seconds.

    Remade on every run, so an export never outlives a change to the model code.
    """
    import numpy as np
    import torch

    from image_classification.anomaly import DetectorState, KNNDetector
    from image_classification.artefacts import Checkpoint
    from image_classification.datasets import SafetensorsDataset
    from image_classification.backbones import backbone_spec
    from image_classification.model import build_model
    from image_classification.pipelines.predict.nodes import PredictConfig, export_onnx_model

    torch.manual_seed(0)
    spec = backbone_spec("efficientnet_lite0")
    metadata = {"backbone": spec.name, "weights": "imagenet", "input_size": spec.input_size, "fine_tuned_blocks": 0,
                "head": {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}}
    checkpoint = Checkpoint.from_model(build_model(), **metadata).to_payload()
    SafetensorsDataset(filepath=str(workdir / "checkpoint.safetensors")).save(checkpoint)
    reference = np.random.default_rng(0).random((1000, 1280))
    state = DetectorState.of(KNNDetector(k=5).fit(reference, np.zeros(1000)), "knn_pooled", "pooled", 0.8).to_payload()
    SafetensorsDataset(filepath=str(workdir / "detector.safetensors")).save(state)
    started = time.perf_counter()
    (workdir / "model.onnx").write_bytes(export_onnx_model(checkpoint, {"threshold": 0.5}, PredictConfig()))
    return time.perf_counter() - started


def load_inputs(workdir: Path) -> dict:
    """What :func:`prepare_inputs` wrote, as predict's nodes take it."""
    from image_classification.datasets import SafetensorsDataset

    return {"model_checkpoint": SafetensorsDataset(filepath=str(workdir / "checkpoint.safetensors")).load(),
            "anomaly_detector": SafetensorsDataset(filepath=str(workdir / "detector.safetensors")).load(),
            "onnx_model": (workdir / "model.onnx").read_bytes(),
            "operating_point": {"threshold": 0.5, "backbone": "efficientnet_lite0"}}


def config(folder: Path, args: argparse.Namespace, workers: int):
    from image_classification.pipelines.predict.nodes import PredictConfig

    return PredictConfig(source={"kind": "folder_tree", "root": str(folder)}, backend=args.backend, device="cpu",
                         batch_size=args.batch_size, workers=workers,
                         threads={"onnxruntime": args.threads, "torch": args.threads})


def run_predict(folder: Path, inputs: dict, predict) -> dict:
    """The predict nodes in order; seconds of each and predict_images' summary."""
    from image_classification.pipelines.predict.nodes import check_onnx_parity, list_prediction_images, predict_images

    timings = {}
    started = time.perf_counter()
    images = list_prediction_images(predict.source, demo_images="unused")
    timings["list"] = time.perf_counter() - started
    started = time.perf_counter()
    parity = check_onnx_parity(inputs["model_checkpoint"], inputs["onnx_model"], images, inputs["operating_point"],
                               predict)
    timings["parity"] = time.perf_counter() - started
    started = time.perf_counter()
    table, summary = predict_images(inputs["model_checkpoint"], inputs["onnx_model"], parity,
                                    inputs["anomaly_detector"], inputs["operating_point"], images, predict)
    timings["predict"] = time.perf_counter() - started
    assert len(table) == len(images) and summary["errors"] == 0
    return timings | {"images": len(table), "backend": summary["backend"], "parity_difference": parity["max_abs_difference"]}


def floor_and_decoding(folder: Path, inputs: dict, predict, backend_name: str, count: int) -> dict:
    """Images/s of the backend on images already in memory, and of decoding alone."""
    import torch

    from image_classification.export import build_backend
    from image_classification.inference import image_loader
    from image_classification.artefacts import Checkpoint
    from image_classification.backbones import backbone_spec

    paths = sorted(str(path) for path in folder.glob("*.jpg"))[:count]
    spec = backbone_spec("efficientnet_lite0")
    started = time.perf_counter()
    batches = [images for images, _reasons in image_loader(paths, spec, predict.batch_size, predict.workers)]
    decoding = len(paths) / (time.perf_counter() - started)
    backend = build_backend(backend_name, Checkpoint.from_payload(inputs["model_checkpoint"]).model(), inputs["onnx_model"],
                            torch.device("cpu"), predict.threads_for(backend_name))
    backend(batches[0])  # warm-up
    started = time.perf_counter()
    for images in batches:
        backend(images)
    return {"floor": len(paths) / (time.perf_counter() - started), "decoding": decoding, "floor_images": len(paths)}


def peak_memory_child(folder: Path, workdir: Path, args: argparse.Namespace) -> None:
    """In a fresh process: predict over ``folder``; print peak memory as JSON."""
    os.environ["TQDM_DISABLE"] = "1"
    inputs = load_inputs(workdir)
    predict = config(folder, args, args.workers[0])
    result = run_predict(folder, inputs, predict)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    result["peak_mb"] = int(status["VmHWM"].split()[0]) / 1024
    result["workers_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def speed(folder: Path, workdir: Path, args: argparse.Namespace) -> None:
    inputs = load_inputs(workdir)
    for workers in args.workers:
        predict = config(folder, args, workers)
        result = run_predict(folder, inputs, predict)
        reference = floor_and_decoding(folder, inputs, predict, result["backend"], min(args.images, args.floor_images))
        rate = result["images"] / result["predict"]
        total = result["images"] / (result["list"] + result["parity"] + result["predict"])
        print(f"\npredict over {result['images']} images of 1280x960, backend {result['backend']}, batch "
              f"{args.batch_size}, {workers} decoding workers, threads {args.threads or 'default'}:")
        print(f"  listing {result['list']:.2f} s, parity check {result['parity']:.1f} s "
              f"(max |score difference| {result['parity_difference']['score']:.1e}), scoring {result['predict']:.1f} s")
        print(f"  {'predict_images (decode, score, detect, decide)':52s} {rate:8.1f} images/s")
        print(f"  {'the whole predict run without the export':52s} {total:8.1f} images/s")
        print(f"  {'floor: forward passes on images in memory':52s} {reference['floor']:8.1f} images/s "
              f"(on {reference['floor_images']} images)")
        print(f"  {'decoding alone (same loader and workers)':52s} {reference['decoding']:8.1f} images/s")
        print(f"  overhead of predict_images over the floor: {reference['floor'] / rate - 1:+.0%} time per image "
              f"({rate / reference['floor']:.2f}x the floor's speed)")
        # on a CPU shared by decoding and inference, each image costs both: the best a pipelined run can do
        bound = 1 / (1 / reference["floor"] + 1 / reference["decoding"])
        print(f"  {'shared-core bound 1/(1/floor + 1/decoding)':52s} {bound:8.1f} images/s; predict_images is "
              f"{bound / rate:.2f}x from it (target: within 1.10x)")


def memory(workdir: Path, args: argparse.Namespace) -> None:
    rows = []
    for count in args.memory:
        subset = image_folder(workdir, count, args.distinct)
        print(f"  predict over {count} images in a fresh process ...", flush=True)
        command = [sys.executable, __file__, "--child-memory", str(subset), "--workdir", str(workdir),
                   "--backend", args.backend, "--batch-size", str(args.batch_size), "--workers", str(args.workers[0])]
        if args.threads:
            command += ["--threads", str(args.threads)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:]))
    print(f"\nPeak resident memory of predict, backend {rows[0]['backend']}, batch {args.batch_size}, "
          f"{args.workers[0]} workers:")
    header = f"{'images':>8s} {'seconds':>9s} {'images/s':>9s} {'main process MB':>16s} {'one worker MB':>14s}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['images']:8d} {row['predict']:9.1f} {row['images'] / row['predict']:9.1f} "
              f"{row['peak_mb']:16.0f} {row['workers_peak_mb']:14.0f}")
    first, last = rows[0], rows[-1]
    print(f"{last['images'] / first['images']:.0f}x the images: main process peak x{last['peak_mb'] / first['peak_mb']:.2f}, "
          f"worker peak x{last['workers_peak_mb'] / max(first['workers_peak_mb'], 1):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="images for the speed comparison (0: skip it)")
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="image counts for the memory comparison")
    parser.add_argument("--floor-images", type=int, default=512, help="images held in memory for the floor")
    parser.add_argument("--distinct", type=int, default=500, help="distinct generated files; the rest are hard links")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch", "torch_nchw"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="decoding workers; several: one run each")
    parser.add_argument("--threads", type=int, default=None, help="backend threads (default: the library's)")
    parser.add_argument("--workdir", default=None, help="where images and models are kept (default: a temp folder)")
    parser.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "predict_end_to_end")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child_memory:
        peak_memory_child(Path(args.child_memory), workdir, args)
        return
    os.environ["TQDM_DISABLE"] = "1"
    print(f"One-off export of the model to ONNX: {prepare_inputs(workdir):.1f} s")
    if args.images:
        speed(image_folder(workdir, args.images, args.distinct), workdir, args)
    if args.memory:
        memory(workdir, args)


if __name__ == "__main__":
    main()
