"""EfficientNet-Lite2 beside Lite0 (or any registered backbones) on cifar10-dev: speed and accuracy.

For each backbone, on the same images, one after the other in one process with the same threads:

1. feature extraction: the frozen backbone over every image through the project's own
   ``inference.extract_backbone_features`` (decode, resize to the backbone's input size,
   forward); its images per second, timed after the backbone is built;
2. the classifier head trained on the cached head inputs with ``training.fit`` and the train
   ``training.cached_feeds`` (the train pipeline with ``trainable_blocks: 0``, its defaults:
   30 epochs, batch 32, early stopping with train's default patience: 10 when the README's
   figures were measured, 5 now);
3. the evaluate stage's logistic baseline (``scorers/baseline.py``: pooled features, C chosen on
   validation).

It prints, per backbone and scorer, test AUROC, average precision, and the recall and precision
on test at the threshold chosen on validation for precision >= 0.9, then the speed ratios.
Images: cifar10-dev vehicles valid, four animals invalid (as conf/cifar10_dev), the same number
per class, split 70/20/10 with seed 42 by data_prep's split_images. Run from the repository root:

    python -m benchmarks.backbones                   # 1,500 images, lite0 and lite2 (~6-10 min on 2 cores)
    python -m benchmarks.backbones --images 300      # a smoke run

Timings depend on what else runs on the machine: the backbones run one after the other, so a
noisy neighbour can favour either; rerun when the ratio matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks import harness
from benchmarks.harness import CIFAR10_DEV as DATA
from benchmarks.harness import SEED, TARGET_PRECISION, select_images


def scores_on_test(name: str, val_scores, test_scores, targets: dict) -> dict:
    """Threshold-free test metrics, and test recall/precision at the validation operating point."""
    from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_at_precision, recall_efficiency

    point = recall_at_precision(targets["val"], val_scores, TARGET_PRECISION)
    test = metrics_at_threshold(targets["test"], test_scores, point.threshold)
    oracle = oracle_recall(targets["test"], test_scores, TARGET_PRECISION)
    return {"scorer": name, "auroc": test["auroc"], "ap": test["average_precision"], "recall": test["recall"],
            "precision": test["precision"], "oracle_recall": oracle,
            "recall_efficiency": recall_efficiency(test["recall"], oracle), "val_reached": point.reached}


def run_backbone(name: str, index, args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from benchmarks.harness import extract_backbone_features, head_outputs, torch_device
    from image_classification.backbones import build_backbone
    from image_classification.model import ClassifierHead
    from image_classification.parameters.shared import ModelConfig
    from image_classification.artefacts import FeatureCache
    from image_classification.parameters.evaluate import EvaluateConfig
    from image_classification.scorers.baseline import LogisticBaseline
    from image_classification.training import TrainConfig, cached_feeds, fit

    model = ModelConfig(backbone=name)
    device = torch_device({"device": "cpu", "threads": args.threads})
    backbone = build_backbone(name, model.weights, model.weights_path)
    paths = index["path"].tolist()
    started = time.perf_counter()
    features = extract_backbone_features(backbone, paths, model.spec, device, batch_size=64, workers=args.workers)
    extract_s = time.perf_counter() - started
    if any(features["errors"]):
        sys.exit(f"{name}: unreadable images: {[e for e in features['errors'] if e][:3]}")

    split = index["split"].to_numpy()
    rows = {part: np.flatnonzero(split == part) for part in ("train", "val", "test")}
    targets = {part: index["target"].to_numpy()[rows[part]] for part in rows}
    cache = FeatureCache.of(head_input=features["head_input"], pooled=features["pooled"], backbone=name,
                         weights=model.weights, head_input_mode=model.head_input, paths=paths,
                         sha256=paths, errors=features["errors"])

    started = time.perf_counter()
    harness.seed_everything(SEED)
    head = ClassifierHead(in_channels=model.spec.feature_channels)
    train = TrainConfig(target_precision=TARGET_PRECISION, save_state_every_s=float("inf"))
    batches, val_scores = cached_feeds(cache.head_input, rows, targets, train, SEED, device)
    best, history, best_epoch = fit(head, batches, val_scores, targets["val"], targets["train"], train, device, SEED,
                                    fingerprint=f"benchmark-backbones-{name}")
    head.load_state_dict(best)
    train_s = time.perf_counter() - started
    head_scores = {part: head_outputs(head, features["head_input"][rows[part]], device)[1] for part in ("val", "test")}

    pooled = cache.pooled.float().numpy()  # as evaluate's baseline scorer reads them
    baseline = LogisticBaseline(EvaluateConfig(target_precision=TARGET_PRECISION).baseline_c_grid, TARGET_PRECISION,
                                SEED).fit(pooled[rows["train"]], targets["train"], pooled[rows["val"]], targets["val"])
    summary = {"C": baseline.c_}
    baseline_scores = {part: baseline.score_samples(pooled[rows[part]]) for part in ("val", "test")}
    return {
        "backbone": name, "input": model.spec.input_size, "map": model.spec.feature_size, "images": len(paths),
        "extract_s": extract_s, "img_s": len(paths) / extract_s, "train_s": train_s, "epochs": len(history),
        "best_epoch": best_epoch, "threads": torch.get_num_threads(), "baseline_c": summary["C"],
        "results": [scores_on_test("head", head_scores["val"], head_scores["test"], targets),
                    scores_on_test(f"logistic (C={summary['C']:g})", baseline_scores["val"], baseline_scores["test"],
                                   targets)],
    }


def print_table(runs: list[dict]) -> None:
    print(f"\n{runs[0]['images']} images, {runs[0]['threads']} torch threads\n")
    header = (f"{'backbone':<20} {'px':>4} {'map':>4} {'img/s':>7} {'scorer':<20} {'AUROC':>7} {'AP':>7} "
              f"{'recall@P>=0.9':>14} {'precision':>10} {'oracle':>7} {'efficiency':>10}")
    print(header)
    print("-" * len(header))
    for run in runs:
        for result in run["results"]:
            flag = "" if result["val_reached"] else " (val never reached P>=0.9)"
            print(f"{run['backbone']:<20} {run['input']:>4} {str(run['map']) + 'x' + str(run['map']):>4} "
                  f"{run['img_s']:>7.1f} {result['scorer']:<20} {result['auroc']:>7.4f} {result['ap']:>7.4f} "
                  f"{result['recall']:>14.3f} {result['precision']:>10.3f} {result['oracle_recall']:>7.3f} "
                  f"{result['recall_efficiency'] if result['recall_efficiency'] is not None else float('nan'):>10.3f}{flag}")
    print("-" * len(header))
    base = runs[0]
    for run in runs[1:]:
        print(f"speed {run['backbone']} / {base['backbone']}: {run['img_s'] / base['img_s']:.2f}x "
              f"({run['extract_s']:.1f} s vs {base['extract_s']:.1f} s to extract)")
    for run in runs:
        print(f"{run['backbone']}: head trained {run['epochs']} epochs (best {run['best_epoch']}) in {run['train_s']:.1f} s")
    print("recall@P>=0.9 and precision: on test, at the threshold chosen on validation for precision >= 0.9; oracle: "
          "the best recall any threshold reaches there on test; efficiency: recall / oracle.")


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1500, help="images in all (default 1500)")
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"],
                        help="registered backbones, the first is the speed reference")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="image-decoding processes (default 1)")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the cifar10-dev folder (default {DATA})")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"{args.data} is not there: this benchmark needs the cifar10-dev images, or give their folder "
                 "with --data")
    harness.quiet_progress()
    import pandas as pd

    index = pd.DataFrame(select_images(args.data, args.images))
    print(f"{args.images} cifar10-dev images {index['split'].value_counts().to_dict()}", flush=True)
    runs = []
    for name in args.backbones:
        print(f"running {name} ...", flush=True)
        runs.append(run_backbone(name, index, args))
    print_table(runs)
    harness.write_results(args.results_file, "backbones", [
        {"arm": f"{run['backbone']} {result['scorer'].split(' ')[0]}", "input_px": run["input"], "img_s": run["img_s"],
         "extract_s": run["extract_s"], "train_s": run["train_s"], "epochs": run["epochs"],
         "best_epoch": run["best_epoch"], "baseline_c": run["baseline_c"],
         **{key: value for key, value in result.items() if key != "scorer"}}
        for run in runs for result in run["results"]], args)


if __name__ == "__main__":
    main()
