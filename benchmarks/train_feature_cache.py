"""How much the train stage's feature cache saves: the same training run two ways, side by side.

A "feature cache" runs the frozen backbone once per image (the train pipeline's extract_features
node, in ONNX Runtime under the default ``runtime.backend: auto``) and trains the classifier head on the cached 4x4 head inputs (the 7x7 feature maps averaged
down to 4x4, the default ``model.head_input: pooled``), as train_classifier does with
``trainable_blocks: 0``.

B "backbone every epoch" is the original project's way: the whole ImageClassifier, backbone
frozen, in eager PyTorch, fed from the image files every epoch and validated through the whole model every epoch,
with the head on full 7x7 maps (train_classifier's image feeds, used when fine-tuning, here with
no trainable block).

Both arms train the default model (efficientnet_lite0, ImageNet weights) with the train
pipeline's settings (batch 32, learning rate 1.5e-3, balanced class weights) and early stopping
off, so both run every epoch. Each arm runs in its own spawned process, one after the other, so
peak memory is each arm's own. Run it from the repository root:

    python -m benchmarks.train_feature_cache            # 1000 images, 30 epochs (~20+ min on 2 cores)
    python -m benchmarks.train_feature_cache --quick    # 200 images, 3 epochs: a smoke run

The images come from ../shared/datasets/cifar10-dev: vehicles (airplane automobile ship truck)
are valid, animals (bird cat deer dog) invalid, the same number from each class, split 70/20/10
per label with seed 42 by data_prep's own split_images.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import queue
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import CIFAR10_DEV as DATA
from benchmarks.harness import SEED, TARGET_PRECISION, select_images

ARMS = {"A": "feature cache", "B": "backbone every epoch"}


def run_arm(arm: str, rows: list[dict], epochs: int, threads: int | None, workers: int, show_progress: bool,
            backend: str, results) -> None:
    """Train one arm in this (spawned) process and put its measurements on ``results``."""
    if not show_progress:
        harness.quiet_progress()
    import numpy as np
    import pandas as pd
    import torch

    from benchmarks.harness import torch_device
    from image_classification.backbones import build_backbone
    from image_classification.model import ClassifierHead, ImageClassifier
    from image_classification.parameters.runtime import RuntimeConfig
    from image_classification.parameters.shared import ModelConfig
    from image_classification.pipelines.train import nodes
    from image_classification.training import TrainConfig, cached_feeds, fit

    index = pd.DataFrame(rows)
    # the passes check every file against its indexed sha256, as after data_prep
    index["sha256"] = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in index["path"]]
    model = ModelConfig()  # efficientnet_lite0, ImageNet weights
    runtime = RuntimeConfig(device="auto", threads=threads, batch_size=64, workers=workers, backend=backend)
    train = TrainConfig(epochs=epochs, batch_size=32, patience=None, target_precision=TARGET_PRECISION,
                        workers=workers, save_state_every_s=float("inf"))
    device = torch_device(runtime)
    rows_of = {split: np.flatnonzero(index["split"].to_numpy() == split) for split in ("train", "val")}
    targets = {split: index["target"].to_numpy()[rows_of[split]] for split in rows_of}

    start = time.perf_counter()
    harness.seed_everything(SEED)
    head = ClassifierHead(in_channels=model.spec.feature_channels)  # first, as train_classifier: same in A and B
    if arm == "A":
        features = nodes.extract_features(index, model, runtime, SEED)
        extracted = time.perf_counter()
        trained = head
        batches, val_scores = cached_feeds(features["tensors"]["head_input"], rows_of, targets, train, SEED, device)
    else:
        extracted = start
        classifier = ImageClassifier(build_backbone(model.backbone, model.weights, model.weights_path), head)
        classifier.freeze_backbone(0)
        # the original way runs the backbone in eager PyTorch
        trained, batches, val_scores = nodes.image_feeds(classifier, index, rows_of, targets, model, train,
                                                         replace(runtime, backend="torch"), SEED, device)
    _, history, best_epoch = fit(trained, batches, val_scores, targets["val"], targets["train"], train,
                                 device, SEED, fingerprint=f"benchmark-{arm}")
    finished = time.perf_counter()
    results.put({
        "arm": arm, "device": str(device), "threads": torch.get_num_threads(),
        "wall_s": finished - start, "extract_s": extracted - start, "train_s": finished - extracted,
        # Linux reports kilobytes. DataLoader workers are left out: forked from this process,
        # their RSS counts the pages they share with it, so adding it up would count those twice
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_recall": float(history["val_recall_at_precision"].iloc[-1]),
        "best_recall": float(history["val_recall_at_precision"].max()), "best_epoch": best_epoch,
        "epochs_run": len(history),
    })


def measure(arm: str, rows: list[dict], args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=run_arm, args=(arm, rows, args.epochs, args.threads, args.workers, args.progress, args.backend, results)
    )
    process.start()
    while True:  # read before join: a process whose queue still holds data does not end
        try:
            result = results.get(timeout=5)
            break
        except queue.Empty:
            if not process.is_alive():
                sys.exit(f"arm {arm} failed with exit code {process.exitcode}; its error is above")
    process.join()
    return result


def print_table(results: dict[str, dict]) -> None:
    first = next(iter(results.values()))
    print(f"device {first['device']}, {first['threads']} threads\n")
    header = f"{'arm':<26} {'wall s':>8} {'extract s':>10} {'train s':>8} {'peak RSS MiB':>13} {'val recall':>11}"
    print(header)
    print("-" * len(header))
    for arm, result in results.items():
        print(f"{arm + ' ' + ARMS[arm]:<26} {result['wall_s']:>8.1f} {result['extract_s']:>10.1f} "
              f"{result['train_s']:>8.1f} {result['peak_rss_mib']:>13.0f} {result['final_recall']:>11.3f}")
    print("-" * len(header))
    if set(results) != set(ARMS):
        return
    a, b = results["A"], results["B"]
    print(f"{'ratio B/A':<26} {b['wall_s'] / a['wall_s']:>8.2f} {'':>10} {b['train_s'] / a['train_s']:>8.2f} "
          f"{b['peak_rss_mib'] / a['peak_rss_mib']:>13.2f}")
    print(f"\nval recall: recall at precision >= {TARGET_PRECISION} on the validation split after the last epoch; "
          f"the best epoch's: A {a['best_recall']:.3f} (epoch {a['best_epoch']}), "
          f"B {b['best_recall']:.3f} (epoch {b['best_epoch']}).\nPeak RSS: the training process's own.")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images in all (default 1000)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per arm (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: all cores)")
    parser.add_argument("--workers", type=int, default=2, help="image-decoding processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 images, 3 epochs")
    parser.add_argument("--progress", action="store_true", help="show progress bars (on stderr)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the cifar10-dev folder (default {DATA})")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "torch"],
                        help="runtime.backend of arm A's extraction (default auto: ONNX Runtime on a CPU)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to run (default both)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs = 200, 3
    if not args.data.is_dir():
        sys.exit(f"{args.data} is not there: this benchmark needs the cifar10-dev images (see "
                 "../shared/datasets/README.md), or give their folder with --data")

    rows = select_images(args.data, args.images)
    per_split = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    print(f"{args.images} cifar10-dev images {per_split}, {args.epochs} epochs, batch 32, early stopping off, "
          f"workers {args.workers}", flush=True)
    results = {}
    for arm in args.arms:
        print(f"running arm {arm} ({ARMS[arm]}) ...", flush=True)
        results[arm] = measure(arm, rows, args)
    print_table(results)
    harness.write_results(args.results_file, "train_feature_cache", [
        {"arm": f"{arm} {ARMS[arm]}", **{key: value for key, value in result.items() if key not in ("arm", "device")}}
        for arm, result in results.items()], args)

if __name__ == "__main__":
    main()
