"""Fine-tuning with the frozen blocks in eager PyTorch against ONNX Runtime, side by side.

With ``train.trainable_blocks`` > 0 every epoch reads the image files and runs the frozen blocks
before the trainable part and the head; ``runtime.backend: auto`` runs those frozen blocks in ONNX
Runtime (checked against PyTorch on the first batch), ``torch`` in eager PyTorch. Both arms train
the same model (efficientnet_lite0 with ImageNet weights, the last block and the head trainable) on
the same cifar10-dev images with the same seed, one after the other in this process, through the
train node's own ``image_feeds`` and ``fit``; it prints wall time per arm, the ratio, and how far
apart the two training histories end.

    python -m benchmarks.fine_tune_speed                 # 400 images, 3 epochs (~6 min on 2 cores)
    python -m benchmarks.fine_tune_speed --images 100 --epochs 1
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import CIFAR10_DEV as DATA
from benchmarks.harness import SEED, TARGET_PRECISION, select_images

ARMS = ("torch", "auto")  # runtime.backend of the frozen blocks: eager PyTorch, ONNX Runtime


def train_once(rows: list[dict], backend: str, epochs: int, workers: int):
    import numpy as np
    import pandas as pd
    import torch

    from image_classification.model import build_model
    from image_classification.parameters.runtime import RuntimeConfig
    from image_classification.parameters.shared import ModelConfig
    from image_classification.pipelines.train import nodes
    from image_classification.training import TrainConfig, fit

    index = pd.DataFrame(rows)
    index["sha256"] = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in index["path"]]
    model = ModelConfig()
    runtime = RuntimeConfig(device="cpu", threads=None, batch_size=64, workers=workers, backend=backend)
    train = TrainConfig(epochs=epochs, batch_size=32, patience=None, target_precision=TARGET_PRECISION,
                        trainable_blocks=1, workers=workers, save_state_every_s=float("inf"))
    rows_of = {split: np.flatnonzero(index["split"].to_numpy() == split) for split in ("train", "val")}
    targets = {split: index["target"].to_numpy()[rows_of[split]] for split in rows_of}
    harness.seed_everything(SEED)
    classifier = build_model(model.backbone, model.weights, trainable_blocks=1)
    started = time.perf_counter()
    part, batches, val_scores = nodes.image_feeds(classifier, index, rows_of, targets, model, train, runtime, SEED,
                                                  torch.device("cpu"))
    _, history, _ = fit(part, batches, val_scores, targets["val"], targets["train"], train, torch.device("cpu"), SEED,
                        fingerprint=f"benchmark-{backend}")
    return time.perf_counter() - started, history


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="runtime.backend arms (default both)")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: this benchmark needs ../shared/datasets/cifar10-dev")
    rows = select_images(DATA, args.images)
    results = {backend: train_once(rows, backend, args.epochs, args.workers) for backend in args.arms}
    print(f"\nfine-tuning the last block, {args.images} cifar10-dev images, {args.epochs} epochs, "
          f"{args.workers} decoding workers:")
    for backend, (seconds, history) in results.items():
        print(f"  runtime.backend={backend:5s} {seconds:7.1f} s   final train loss {history['train_loss'].iloc[-1]:.4f}, "
              f"val AP {history['val_average_precision'].iloc[-1]:.4f}")
    if set(results) == set(ARMS):
        torch_s, auto_s = results["torch"][0], results["auto"][0]
        apart = (results["torch"][1].drop(columns="epoch") - results["auto"][1].drop(columns="epoch")).abs().max().max()
        print(f"  ratio torch/auto {torch_s / auto_s:.2f}x; the two histories differ by at most {apart:.1e}")
    harness.write_results(args.results_file, "fine_tune_speed", [
        {"arm": f"runtime.backend={backend}", "seconds": seconds, "final_train_loss": history["train_loss"].iloc[-1],
         "final_val_average_precision": history["val_average_precision"].iloc[-1]}
        for backend, (seconds, history) in results.items()], args)


if __name__ == "__main__":
    main()
