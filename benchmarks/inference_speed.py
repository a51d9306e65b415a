"""Inference throughput of every predict backend against PyTorch eager fp32, side by side.

Backends (``image_classification.export``), each scoring the whole model (backbone and head:
score, embedding, pooled features) on 224 x 224 images already in memory:

- ``torch_nchw``: PyTorch eager fp32, plain NCHW tensors: the baseline;
- ``torch``: PyTorch eager fp32 with channels_last memory (what the project's inference runs);
- ``onnxruntime``: the model exported to ONNX, in ONNX Runtime on the CPU.

For each backend and batch size (1 and 32) it tries every thread count (1 and 2 by default),
keeps the best, and prints images per second and the ratio to the baseline at the same batch
size. Rounds interleave the backends, so a burst of load from elsewhere slows them all alike;
each figure is the median over the calls of all rounds. It also prints how far the export's
outputs are from PyTorch's on real photos (scikit-image's). Run it from the repository root:

    python -m benchmarks.inference_speed                 # ~2-4 min on 2 cores
    python -m benchmarks.inference_speed --rounds 2      # a quicker, noisier run

bf16 is left out: on a CPU without AVX-512 BF16 or AMX (this one has AVX2 only) it is emulated
and slower than fp32.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

from benchmarks import harness
from benchmarks.harness import BACKENDS, build_backend, export_onnx, parity
from image_classification.model import ImageClassifier, build_model

BASELINE = "torch_nchw"
LABELS = {
    "torch_nchw": "PyTorch eager fp32, NCHW (baseline)",
    "torch": "PyTorch eager fp32, channels_last",
    "onnxruntime": "ONNX Runtime fp32",
}


def classifier(backbone: str, weights_path: str | None) -> ImageClassifier:
    """The backbone with its ImageNet weights (random ones if unavailable) and a fresh head."""
    try:
        model = build_model(backbone, weights="imagenet", weights_path=weights_path)
    except Exception as error:  # no weights file here: speed does not depend on the values
        print(f"ImageNet weights unavailable ({str(error).splitlines()[0]}); timing random weights")
        model = build_model(backbone, weights="none")
    return model.eval()


def real_photos(size: int = 224) -> torch.Tensor:
    """scikit-image's bundled photos, preprocessed as predict does."""
    import skimage.data
    from PIL import Image

    from image_classification.backbones import backbone_spec
    from image_classification.model import preprocess_transform

    transform = preprocess_transform(backbone_spec("efficientnet_lite0"))
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry")
    return torch.stack([transform(Image.fromarray(getattr(skimage.data, name)()).convert("RGB")) for name in names])


def time_calls(backend, images: torch.Tensor, threads: int, calls: int) -> list[float]:
    """Seconds per image of ``calls`` calls."""
    if backend.name != "onnxruntime":
        torch.set_num_threads(threads)  # global in PyTorch; set before every torch measurement
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        backend(images)
        seconds.append((time.perf_counter() - started) / len(images))
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "mobilenet_v2"])
    parser.add_argument("--weights-path", default=None, help="state dict for mobilenet_v2 (see README)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds over every configuration")
    parser.add_argument("--seconds", type=float, default=1.5, help="rough time per configuration per round")
    parser.add_argument("--arms", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help=f"backends to time (default all; {BASELINE}, the baseline, always runs)")
    args = parser.parse_args(argv)
    arms = [name for name in BACKENDS if name in args.arms or name == BASELINE]

    model = classifier(args.backbone, args.weights_path)
    started = time.perf_counter()
    onnx_model = export_onnx(model, 224, {})
    print(f"Exported {args.backbone} to ONNX in {time.perf_counter() - started:.1f} s")
    differences = parity(model, onnx_model, real_photos())
    print("ONNX Runtime vs PyTorch eager fp32 on 6 real photos, max |difference|: "
          + ", ".join(f"{name} {value:.1e}" for name, value in differences.items()))

    backends = {(name, threads): build_backend(name, model, onnx_model, torch.device("cpu"), threads)
                for name in arms for threads in args.threads}
    inputs = {batch: torch.randn(batch, 3, 224, 224) for batch in args.batches}
    calls = {}
    for (name, threads), backend in backends.items():  # warm up, and size each measurement
        for batch, images in inputs.items():
            time_calls(backend, images, threads, 1)
            per_call = max(min(time_calls(backend, images, threads, 2)) * batch, 1e-3)
            calls[name, threads, batch] = max(1, round(args.seconds / per_call))
    samples = {key: [] for key in calls}
    for round_number in range(args.rounds):
        for name, threads, batch in calls:
            samples[name, threads, batch] += time_calls(backends[name, threads], inputs[batch], threads,
                                                        calls[name, threads, batch])
        print(f"  round {round_number + 1}/{args.rounds} done")

    speed = {key: 1.0 / statistics.median(values) for key, values in samples.items()}
    print(f"\n{args.backbone}, 224x224, images/s at the best thread count (threads in brackets), "
          f"ratio to {LABELS[BASELINE]}:")
    header = f"{'backend':40s}" + "".join(f"{f'batch {batch}':>24s}" for batch in args.batches)
    print(header + "\n" + "-" * len(header))
    for name in arms:
        cells = []
        for batch in args.batches:
            best = max(args.threads, key=lambda threads: speed[name, threads, batch])
            baseline = max(speed[BASELINE, threads, batch] for threads in args.threads)
            ratio = speed[name, best, batch] / baseline
            cells.append(f"{speed[name, best, batch]:8.1f} [{best}]  x{ratio:5.2f}")
        print(f"{LABELS[name]:40s}" + "".join(f"{cell:>24s}" for cell in cells))
    print("\nAll thread counts (images/s):")
    for (name, threads, batch), value in sorted(speed.items()):
        print(f"  {name:12s} threads {threads}  batch {batch:3d}: {value:8.1f}")
    harness.write_results(args.results_file, "inference_speed", [
        {"arm": "onnx parity, 6 photos", **{f"max_difference_{name}": value for name, value in differences.items()}}] + [
        {"arm": f"{name}, batch {batch}, {threads} thread(s)", "img_s": value,
         "ratio_to_baseline": value / max(speed[BASELINE, t, batch] for t in args.threads)}
        for (name, threads, batch), value in sorted(speed.items())], args)


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=UserWarning)
    main()
