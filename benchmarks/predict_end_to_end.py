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

    python -m benchmarks.predict_end_to_end                                 # speed over 2,000 images
    python -m benchmarks.predict_end_to_end --images 0 --memory 5000 20000  # memory only (~30+ min on 2 cores)
    python -m benchmarks.predict_end_to_end --images 500 --memory 500 2000  # a quick run of both

The model is efficientnet_lite0 with its ImageNet weights and an untrained head (speed and memory
do not depend on the head's values); the anomaly detector is a kNN on 1,000 pooled-feature
vectors, like zero_shot's default. Images are crops of scikit-image's photos at 1280x960 with
grain, quality 90; past ``--distinct`` files the rest are hard links, which predict reads and
decodes like any other file.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import image_folder
from benchmarks.harness import load_predict_inputs as load_inputs
from benchmarks.harness import prepare_predict_inputs as prepare_inputs


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

    from benchmarks.harness import build_backend, image_loader
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
    harness.quiet_progress()
    inputs = load_inputs(workdir)
    predict = config(folder, args, args.workers[0])
    result = run_predict(folder, inputs, predict)
    result["peak_mb"] = harness.peak_rss_mib()
    result["workers_peak_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def speed(folder: Path, workdir: Path, args: argparse.Namespace) -> list[dict]:
    inputs, rows = load_inputs(workdir), []
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
        rows.append({"arm": f"speed, {workers} workers", "list_s": result["list"], "parity_s": result["parity"],
                     "predict_s": result["predict"], "predict_img_s": rate, "run_img_s": total,
                     "floor_img_s": reference["floor"], "decoding_img_s": reference["decoding"], "bound_img_s": bound,
                     "from_bound": bound / rate, "parity_score_difference": result["parity_difference"]["score"]})
    return rows


def memory(workdir: Path, args: argparse.Namespace) -> list[dict]:
    rows = []
    for count in args.memory:
        subset = image_folder(workdir, count, args.distinct)
        print(f"  predict over {count} images in a fresh process ...", flush=True)
        command = [sys.executable, "-m", "benchmarks.predict_end_to_end", "--child-memory", str(subset), "--workdir", str(workdir),
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
    return [{"arm": f"memory, {row['images']} images", "seconds": row["predict"],
             "img_s": row["images"] / row["predict"], "peak_mb": row["peak_mb"],
             "worker_peak_mb": row["workers_peak_mb"]} for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
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
    args = parser.parse_args(argv)

    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "predict_end_to_end")
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child_memory:
        peak_memory_child(Path(args.child_memory), workdir, args)
        return
    harness.quiet_progress()
    export_s = prepare_inputs(workdir)
    print(f"One-off export of the model to ONNX: {export_s:.1f} s")
    rows = [{"arm": "export", "seconds": export_s}]
    if args.images:
        rows += speed(image_folder(workdir, args.images, args.distinct), workdir, args)
    if args.memory:
        rows += memory(workdir, args)
    harness.write_results(args.results_file, "predict_end_to_end", rows, args)


if __name__ == "__main__":
    main()
