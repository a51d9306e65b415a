"""Quality on small, grouped inspection data: every candidate score over grouped folds, side by side.

On ../shared/datasets/defects-dev (1,665 solar-cell photos, good = valid, defective = invalid,
``group`` = module and near-twins) the images are cut into ``--folds`` grouped, stratified folds
(scikit-learn's StratifiedGroupKFold, seed 42): each fold is the test set once. The rest is split
again by group, three parts train to one part validation. Candidates, all from one pass of the frozen
backbone over the files (the pipeline's ``extract_backbone_features``, with patches):

- ``head``      the original head (the project's ``fit``, cached 4x4 inputs, early stopping on validation);
- ``logistic``  the project's LogisticBaseline on pooled features (C chosen on validation);
- ``patch``     the PatchCore-style patch score (``image_classification.patches``), memory from the
                valid training images;
- ``stack``     logistic regression over the three scores, fitted on the validation split (its own
                validation scores, for the threshold, are cross-fitted over validation groups);
- ``chosen``    per fold, whichever of the four has the best validation average precision.

Per candidate it prints mean +- sd over folds of test AUROC and AP (valid = positive class), and,
for each threshold rule (``point`` and ``lower_bound``, chosen on validation), the test recall and in
how many folds test precision reached the target. Nothing is tuned on a test fold.

    python benchmarks/defects_quality.py                  # 5 folds, 30 epochs (~15 min on 2 cores)
    python benchmarks/defects_quality.py --quick          # 2 folds, 3 epochs: a smoke run

The features are cached in --cache (default /tmp/defects_quality_features.safetensors) and reused
when they match the backbone, grid and file list.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from image_classification.backbones import backbone_spec, build_backbone  # noqa: E402
from image_classification.baseline import LogisticBaseline  # noqa: E402
from image_classification.inference import extract_backbone_features, head_outputs  # noqa: E402
from image_classification.metrics import RuleSettings, metrics_at_threshold, select_threshold  # noqa: E402
from image_classification.model import ClassifierHead  # noqa: E402
from image_classification.parameters.train import TrainConfig  # noqa: E402
from image_classification.patches import PatchMemory, bytes_per_image  # noqa: E402
from image_classification.pipelines.train.nodes import cached_feeds  # noqa: E402
from image_classification.training import fit  # noqa: E402

DATA = REPO_ROOT.parent / "shared" / "datasets" / "defects-dev"
RULES = ("point", "lower_bound")
CANDIDATES = ("head", "logistic", "patch", "stack", "chosen")


def features(manifest: pd.DataFrame, root: Path, backbone: str, grid: int, cache: Path) -> dict[str, torch.Tensor]:
    """Head inputs, pooled features and patches of every image, from ``cache`` when it matches."""
    key = f"{backbone}|{grid}|{len(manifest)}|{manifest['sha256'].iloc[0]}|{manifest['sha256'].iloc[-1]}"
    if cache.is_file():
        stored = load_file(cache)
        if bytes(stored.pop("key").tolist()).decode() == key:
            print(f"features from {cache}")
            return stored
    torch.manual_seed(0)
    spec = backbone_spec(backbone)
    start = time.perf_counter()
    out = extract_backbone_features(build_backbone(backbone), [str(root / p) for p in manifest["path"]], spec,
                                    torch.device("cpu"), batch_size=32, patch_grid=grid)
    print(f"extracted {len(manifest)} images in {time.perf_counter() - start:.0f} s; patches "
          f"{tuple(out['patches'].shape)}, {bytes_per_image(grid, out['patches'].shape[-1]):,} bytes per image")
    if any(out["errors"]):
        raise SystemExit(f"unreadable images: {[e for e in out['errors'] if e][:3]}")
    tensors = {name: out[name].contiguous() for name in ("head_input", "pooled", "patches")}
    save_file({**tensors, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, cache)
    return tensors


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def head_scores(feats: dict, rows: dict, targets: dict, epochs: int, seed: int) -> dict[str, np.ndarray]:
    config = TrainConfig(epochs=epochs)
    device = torch.device("cpu")
    head = ClassifierHead(in_channels=feats["head_input"].shape[1])
    batches, val_scores = cached_feeds(type("Cache", (), {"head_input": feats["head_input"]}), rows, targets,
                                       config, seed, device)
    best, _, _ = fit(head, batches, val_scores, targets["val"], targets["train"], config, device, seed, "bench")
    head.load_state_dict(best)
    return {split: head_outputs(head, feats["head_input"][rows[split]], device)[1] for split in ("val", "test")}


def stack_scores(val: dict[str, np.ndarray], test: dict[str, np.ndarray], y_val: np.ndarray,
                 groups_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validation scores cross-fitted over validation groups, and test scores of a stacker fitted on all."""
    def columns(scores: dict) -> np.ndarray:
        return np.column_stack([logit(scores["head"]), logit(scores["logistic"]), scores["patch"]])

    def model():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced"))

    x_val = columns(val)
    oof = np.zeros(len(y_val))
    folds = StratifiedGroupKFold(n_splits=min(5, len(np.unique(groups_val))), shuffle=True, random_state=0)
    for a, b in folds.split(x_val, y_val, groups_val):
        oof[b] = model().fit(x_val[a], y_val[a]).predict_proba(x_val[b])[:, 1]
    return oof, model().fit(x_val, y_val).predict_proba(columns(test))[:, 1]


def run_fold(feats: dict, y: np.ndarray, groups: np.ndarray, rest: np.ndarray, test: np.ndarray, fold: int,
             epochs: int, target: float) -> dict[str, dict]:
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=fold)
    a, b = next(inner.split(rest, y[rest], groups[rest]))
    rows = {"train": rest[a], "val": rest[b], "test": test}
    targets = {split: y[index] for split, index in rows.items()}
    val, tst = {}, {}
    val["head"], tst["head"] = head_scores(feats, rows, targets, epochs, seed=42 + fold).values()
    pooled = feats["pooled"].float().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = LogisticBaseline((0.001, 0.01, 0.1, 1.0, 10.0), target, seed=42).fit(
            pooled[rows["train"]], targets["train"], pooled[rows["val"]], targets["val"])
    val["logistic"], tst["logistic"] = (baseline.score_samples(pooled[rows[s]]) for s in ("val", "test"))
    memory = PatchMemory.fit(feats["patches"][rows["train"][targets["train"] == 1]], seed=fold)
    # valid is the positive class: a patch far from every valid patch lowers the score
    val["patch"], tst["patch"] = (-memory.anomaly_scores(feats["patches"][rows[s]]) for s in ("val", "test"))
    val["stack"], tst["stack"] = stack_scores(val, tst, targets["val"], groups[rows["val"]])
    val_ap = {name: average_precision_score(targets["val"], scores) for name, scores in val.items()}
    best = max(val_ap, key=val_ap.get)
    val["chosen"], tst["chosen"] = val[best], tst[best]
    settings = RuleSettings(target, 0.95, "wilson")
    results = {}
    for name in CANDIDATES:
        result = {"auroc": roc_auc_score(targets["test"], tst[name]),
                  "ap": average_precision_score(targets["test"], tst[name]),
                  "val_ap": average_precision_score(targets["val"], val[name]), "picked": best}
        for rule in RULES:
            threshold = select_threshold(targets["val"], val[name], rule, settings)["threshold"]
            measured = metrics_at_threshold(targets["test"], tst[name], threshold)
            result[rule] = (measured["recall"], measured["precision"])
        results[name] = result
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--grid", type=int, default=14)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/defects_quality_features.safetensors"))
    parser.add_argument("--quick", action="store_true", help="2 folds, 3 epochs")
    args = parser.parse_args()
    if args.quick:
        args.folds, args.epochs = 2, 3
    if not (args.data / "manifest.csv").is_file():
        raise SystemExit(f"{args.data}/manifest.csv not found: this benchmark needs ../shared/datasets/defects-dev")
    torch.set_num_threads(args.threads)
    manifest = pd.read_csv(args.data / "manifest.csv")
    y = (manifest["label"] == "valid").to_numpy().astype(int)
    groups = manifest["group"].to_numpy()
    feats = features(manifest, args.data, args.backbone, args.grid, args.cache)
    outer = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=42)
    folds = []
    for fold, (rest, test) in enumerate(outer.split(np.zeros(len(y)), y, groups)):
        start = time.perf_counter()
        folds.append(run_fold(feats, y, groups, rest, test, fold, args.epochs, args.target))
        print(f"fold {fold}: {len(test)} test images, {len(np.unique(groups[test]))} groups, "
              f"{time.perf_counter() - start:.0f} s; chosen: {folds[-1]['chosen']['picked']}; test AUROC "
              + "  ".join(f"{name} {folds[-1][name]['auroc']:.3f}" for name in CANDIDATES), flush=True)
    print(f"\n{args.data.name}, {args.backbone}, {args.folds} grouped folds, target precision {args.target}")
    header = f"{'candidate':10s} {'val AP':>14s} {'test AUROC':>14s} {'test AP':>14s}"
    for rule in RULES:
        header += f" | {rule + ' recall':>20s} {'prec>=t':>7s} {'prec min':>8s}"
    print(header)
    for name in CANDIDATES:
        def mean_sd(values):
            values = np.asarray(values, dtype=float)
            return f"{np.nanmean(values):.3f} +- {np.nanstd(values, ddof=1) if len(values) > 1 else 0:.3f}"
        line = f"{name:10s} {mean_sd([f[name]['val_ap'] for f in folds]):>14s} " \
               f"{mean_sd([f[name]['auroc'] for f in folds]):>14s} {mean_sd([f[name]['ap'] for f in folds]):>14s}"
        for rule in RULES:
            recalls = [f[name][rule][0] for f in folds]
            precisions = np.array([f[name][rule][1] for f in folds], dtype=float)
            held = int(np.sum(np.nan_to_num(precisions) >= args.target))
            line += f" | {mean_sd(recalls):>20s} {f'{held}/{len(folds)}':>7s} {np.nanmin(precisions):8.3f}"
        print(line)


if __name__ == "__main__":
    main()
