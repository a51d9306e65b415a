"""What defect maps cost predict: time and bytes per image, maps on against maps off, side by side.

predict_images over a folder of generated camera-like JPEGs with a patch classifier served (so every
image's patch vectors are computed either way: the map only reads what the score already reads), run
in interleaved rounds on the same backend, threads and workers with ``predict.defect_maps`` false, with
the served score's own map, and with the patch Gaussian's map served beside it
(``evaluate.defect_map_from: patch_gaussian``, the default; its pass also outputs the fine patch
vectors, which the other two leave out), each with the ONNX export and parity check predict makes for it; the median seconds of each and their ratios
to maps off (target: at most 1.10). Then the bytes each image adds to predictions.parquet, and, apart
from the target, the time overlay PNGs add.

    python -m benchmarks.defect_map_cost                 # 300 images, 3 rounds
    python -m benchmarks.defect_map_cost --images 1000 --rounds 5

The model is efficientnet_lite0 with its ImageNet weights and an untrained head; the patch classifier
is fitted for two epochs on arbitrary labels of 64 of the images and the patch Gaussian on the half of
them labelled valid (speed does not depend on their values). Images are those of
benchmarks/predict_end_to_end.py (1280x960).
"""

from __future__ import annotations

import io
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import harness
from benchmarks.harness import image_folder
from benchmarks.harness import load_predict_inputs as load_inputs
from benchmarks.harness import prepare_predict_inputs as prepare_inputs

GRID = 14


def patch_points(folder: Path, inputs: dict) -> tuple[dict, dict]:
    """Operating points serving a patch classifier on the 14x14 grid of the checkpoint's pass: drawing its
    own map, and with the patch Gaussian's map beside it."""
    import torch

    from image_classification.artefacts import Checkpoint
    from image_classification.operating_point import OperatingPoint
    from benchmarks.harness import model_outputs
    from image_classification.patches import PatchClassifier
    from image_classification.scorers import PatchGaussianScorer

    checkpoint = Checkpoint.from_payload(inputs["model_checkpoint"])
    paths = sorted(str(path) for path in folder.glob("*.jpg"))[:64]
    outputs = model_outputs(checkpoint.model(), paths, checkpoint.spec, torch.device("cpu"), patch_grid=GRID)
    patches, labels = torch.from_numpy(outputs["patches"]), np.arange(len(paths)) % 2
    classifier = PatchClassifier.fit(patches, labels, epochs=2)
    gaussian = PatchGaussianScorer.of_valid(torch.from_numpy(outputs["fine_patches"])[labels == 1], GRID)
    beside = {"candidate": gaussian.name, "weights": gaussian.to_payload()}
    return tuple(OperatingPoint.for_checkpoint({"threshold": 0.5}, checkpoint, "patch_classifier",
                                               classifier.to_payload(grid=GRID), map_from).to_payload()
                 for map_from in (None, beside))


def parquet_bytes(table) -> int:
    buffer = io.BytesIO()
    table.to_parquet(buffer)
    return buffer.getbuffer().nbytes


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=100, help="distinct generated files; the rest are hard links")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="where images and models are kept (default: a temp folder)")
    args = parser.parse_args(argv)

    from image_classification.pipelines.predict.nodes import (
        PredictConfig,
        check_onnx_parity,
        draw_overlays,
        export_onnx_model,
        list_prediction_images,
        predict_images,
    )

    harness.quiet_progress()
    workdir = Path(args.workdir or Path(tempfile.gettempdir()) / "predict_end_to_end")
    workdir.mkdir(parents=True, exist_ok=True)
    prepare_inputs(workdir)
    folder = image_folder(workdir, args.images, args.distinct)
    inputs = load_inputs(workdir)
    point, gaussian_point = patch_points(folder, inputs)
    source = {"kind": "folder_tree", "root": str(folder)}
    images = list_prediction_images(source, demo_images="unused")
    configs = {setting: PredictConfig(source=source, backend=args.backend, device="cpu", workers=args.workers,
                                      defect_maps=setting) for setting in (False, True)}
    checkpoint = inputs["model_checkpoint"]
    prepared = {}  # per arm, as predict runs it: its own export (fine patch vectors only for the Gaussian's map)
    for name, served, config in (("maps off", gaussian_point, configs[False]), ("own map", point, configs[True]),
                                 ("Gaussian map", gaussian_point, configs[True])):
        onnx_model = export_onnx_model(checkpoint, served, config)
        prepared[name] = (onnx_model, check_onnx_parity(checkpoint, onnx_model, images, served, config), served, config)

    def run(name: str):
        onnx_model, parity, served, config = prepared[name]
        return predict_images(checkpoint, onnx_model, parity, inputs["anomaly_detector"], served, images, config)

    for name in prepared:  # warm-up: caches, thread pools
        run(name)
    arms = {name: (lambda name=name: run(name)) for name in prepared}
    seconds, results = harness.interleaved(arms, args.rounds)
    median = harness.medians(seconds)
    (off, summary), (on, _) = results["maps off"], results["Gaussian map"]
    for name in arms:  # the map never changes the served score
        assert np.array_equal(off["score"].to_numpy(), results[name][0]["score"].to_numpy(), equal_nan=True)
    ratios = {name: median[name] / median["maps off"] for name in ("own map", "Gaussian map")}
    extra = (parquet_bytes(on) - parquet_bytes(off)) / len(on)
    overlay_config = PredictConfig(source=source, save_overlays=True)
    started = time.perf_counter()
    for draw in draw_overlays(on, overlay_config).values():
        draw().save(io.BytesIO(), format="PNG")
    overlay_s = (time.perf_counter() - started) / len(on)

    print(f"\npredict_images over {len(images)} images of 1280x960, patch classifier served, backend "
          f"{summary['backend']}, {args.workers} workers, {args.rounds} interleaved rounds ({harness.cpu_model()}):")
    for name in seconds:
        print(f"  {name:10s} median {median[name]:7.2f} s  {len(images) / median[name]:7.1f} images/s  "
              f"(rounds: {', '.join(f'{value:.2f}' for value in seconds[name])})")
    for name, ratio in ratios.items():
        print(f"  {name} / maps off: {ratio:.3f}x the time (target: at most 1.10x)")
    print(f"  predictions.parquet: {extra:.0f} more bytes per image with maps ({GRID}x{GRID} float32: {4 * GRID * GRID} "
          "raw)")
    print(f"  overlay PNGs (predict.save_overlays, apart from the target): {overlay_s * 1000:.0f} ms per image more")
    harness.write_results(args.results_file, "defect_map_cost", [
        {"arm": name, "median_s": median[name], "img_s": len(images) / median[name]} for name in seconds] + [
        {"arm": f"{name} / maps off", "on_over_off": ratio, "parquet_bytes_per_image": extra,
         "overlay_ms_per_image": overlay_s * 1e3} for name, ratio in ratios.items()],
        args)


if __name__ == "__main__":
    main()
