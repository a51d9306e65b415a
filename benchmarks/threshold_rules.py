"""Which threshold rule keeps test precision at the target: ``point`` against ``lower_bound``, on both dev sets.

The operating point is chosen on validation and measured on test. A point estimate of validation
precision is optimistic on a few hundred images; ``lower_bound`` asks the one-sided confidence bound
to reach the target instead (``evaluate.bound_method``, ``evaluate.bound_level``). This benchmark
measures what each rule buys and costs, through the project's own nodes and nothing tuned on test:

- cifar10-dev (``--env cifar10_dev``: vehicles valid, four animals invalid), five split seeds of
  data_prep's own split: the train node's head on one cached pass of the frozen backbone, the score
  stage, then evaluate's ``choose_operating_point`` under each rule, measured on that seed's test split;
- defects-dev (1,665 solar-cell photos), five grouped, stratified folds of the pipeline's
  cross-validation (``candidates.cross_validate``, the head on cached features), under each rule.

Per data set and rule it prints mean +- sd of test recall and precision, the lowest test precision,
in how many splits test precision reached the target (0.90), the oracle recall (the best any threshold
reaches at the target on the same test scores) and the recall efficiency (test recall / oracle).

    python benchmarks/threshold_rules.py            # ~15 min on 2 cores after feature extraction
    python benchmarks/threshold_rules.py --quick    # 2 seeds/folds, 3 epochs: a smoke run

Features are cached as open_world.py and defects_quality.py cache them (same files, same keys).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")

import defects_quality  # noqa: E402
import open_world  # noqa: E402

from image_classification.candidates import cross_validate  # noqa: E402
from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_efficiency  # noqa: E402
from image_classification.parameters.evaluate import EvaluateConfig  # noqa: E402
from image_classification.parameters.shared import ModelConfig  # noqa: E402
from image_classification.parameters.train import TrainConfig  # noqa: E402
from image_classification.pipelines.evaluate.nodes import (  # noqa: E402
    choose_operating_point,
    score_images,
)
from image_classification.pipelines.score.nodes import score_index  # noqa: E402
from image_classification.pipelines.train.nodes import train_classifier  # noqa: E402
from image_classification.training import NoResume  # noqa: E402

RULES = ("point", "lower_bound")


def cifar_rows(seeds: list[int], epochs: int, cache: Path) -> list[dict]:
    """Per split seed and rule, the head's test recall and precision at the threshold chosen on validation."""
    params = open_world.parameters()
    model = ModelConfig(**params["model"])
    runtime = dict(params["runtime"]) | {"dask": None}
    train = TrainConfig(**{**params["train"], "epochs": epochs})
    rows = []
    for seed, index in open_world.split_indices(params, seeds):
        features = open_world.cached_features(index, model, runtime, train, cache)
        checkpoint, _ = train_classifier(features, index, model, train, runtime, seed, NoResume())
        evaluated = score_images(score_index(checkpoint, features, index, runtime), checkpoint, index)
        tested = evaluated[evaluated["split"] == "test"]
        for rule in RULES:
            # the head's operating point, whichever score evaluate would serve
            evaluate = EvaluateConfig(**{**params["evaluate"], "rule": rule, "operating_candidate": "model"})
            point = choose_operating_point(evaluated, checkpoint, evaluate)
            targets, scores = tested["target"].to_numpy(int), tested["score"].to_numpy()
            measured = metrics_at_threshold(targets, scores, point["threshold"])
            oracle = oracle_recall(targets, scores, evaluate.target_precision)
            rows.append({"data": "cifar10-dev (split seeds)", "split": seed, "rule": rule,
                         "recall": measured["recall"], "precision": measured["precision"], "oracle": oracle,
                         "efficiency": recall_efficiency(measured["recall"], oracle)})
        print(f"cifar10-dev seed {seed} done", flush=True)
    return rows


def defects_rows(folds: int, epochs: int, cache: Path) -> list[dict]:
    """Per grouped fold and rule, the head's test recall and precision at the threshold chosen on validation."""
    manifest = pd.read_csv(defects_quality.DATA / "manifest.csv")
    y = (manifest["label"] == "valid").to_numpy().astype(int)
    feats = defects_quality.features(manifest, defects_quality.DATA, "efficientnet_lite0", 14, cache)
    rows = []
    for rule in RULES:
        report = cross_validate(feats["head_input"], feats["pooled"].float().numpy(), None, y,
                                manifest["group"].to_numpy(), folds, TrainConfig(epochs=epochs),
                                EvaluateConfig(rule=rule), seed=42)
        rows += [{"data": "defects-dev (grouped folds)", "split": fold["fold"], "rule": rule,
                  "recall": fold["candidates"]["model"]["test_recall"],
                  "precision": fold["candidates"]["model"]["test_precision"],
                  "oracle": fold["candidates"]["model"]["test_oracle_recall"],
                  "efficiency": fold["candidates"]["model"]["test_recall_efficiency"]} for fold in report["folds"]]
        print(f"defects-dev rule {rule} done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 seeds and folds, 3 epochs")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--cifar-cache", type=Path, default=Path("/tmp/open_world_features.safetensors"))
    parser.add_argument("--defects-cache", type=Path, default=Path("/tmp/defects_quality_features.safetensors"))
    args = parser.parse_args()
    for data in (open_world.DATA, defects_quality.DATA):
        if not data.is_dir():
            raise SystemExit(f"{data} is missing: this benchmark needs both dev sets in ../shared/datasets")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    splits, epochs = (2, 3) if args.quick else (5, 30)
    rows = cifar_rows([42, 1, 2, 3, 4][:splits], epochs, args.cifar_cache) + defects_rows(splits, epochs, args.defects_cache)
    frame = pd.DataFrame(rows)
    frame["held"] = frame["precision"] >= args.target
    print(f"\nThe head's test figures at the threshold each rule chooses on validation (target precision {args.target}):\n")
    print("| data | rule | test recall | test precision | lowest precision | precision >= target | oracle recall | "
          "recall efficiency |\n|---|---|---|---|---|---|---|---|")
    frame["efficiency"] = frame["efficiency"].astype(float)
    for (data, rule), group in frame.groupby(["data", "rule"], sort=False):
        cell = lambda c: f"{group[c].mean():.3f} +- {group[c].std(ddof=1):.3f}"  # noqa: E731
        print(f"| {data} | {rule} | {cell('recall')} | {cell('precision')} | {np.nanmin(group['precision']):.3f} | "
              f"{int(group['held'].sum())}/{len(group)} | {cell('oracle')} | {cell('efficiency')} |")
    print("\nPer split:\n" + frame.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
