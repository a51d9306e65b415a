"""How the patch classifier is trained, variant by variant, on defects-dev's five grouped folds.

``PatchClassifier`` (image_classification.patches) scores every cached patch vector with a small
network and an image by the mean of its ``top_k`` most defective patches, trained on image labels.
This benchmark fits it on the train rows of the same five grouped folds as ``defects_quality.py``
(one pass of the frozen backbone, the pipeline's features and patches, cached) and prints, per
variant, mean +- sd of test and validation AUROC over 5 folds x ``--seeds`` seeds, and seconds per
fit, side by side:

- the project's settings (30 epochs, 64 hidden units, top 10 patches, hidden dropout with one mask
  per image shared by its patches);
- hidden dropout drawn per element instead (``nn.Dropout``), the usual way and the slow one here;
- 15 and 60 epochs; top 1, 3 and 30 patches; 32 and 128 hidden units;
- each patch's grid position appended to its vector (x, y in [-1, 1]);
- for reference, the project's LogisticBaseline on pooled features and the PatchCore-style memory.

Choose on the validation column: nothing here looks at a test fold to choose.

With ``--thresholds`` it asks instead how a served patch classifier should get its threshold: per
outer fold, five inner grouped folds of the labelled rest (train + validation) are each fitted on
all their other rows (the classifier trains a fixed number of epochs and needs no validation rows),
their held-out scores give every labelled image an out-of-fold score, the threshold is chosen on
those by ``point`` and ``lower_bound``, and applied to the split fit (train rows only), the mean of
the five inner fits, and one refit on the whole labelled rest. Per rule and arm: test AUROC, recall,
precision and in how many folds it reached 0.90.

    python -m benchmarks.patch_classifier                # ~6 min on 2 cores after a 15 s extraction
    python -m benchmarks.patch_classifier --quick        # 2 folds, 1 seed, fewer variants
    python -m benchmarks.patch_classifier --thresholds   # ~4 min
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import harness
from benchmarks.harness import grouped_folds
from image_classification import patches as patch_module
from image_classification.scorers.baseline import LogisticBaseline
from image_classification.metrics import metrics_at_threshold, oracle_recall, recall_efficiency, select_threshold
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.patches import PatchClassifier, PatchMemory

VARIANTS = {
    "project: 30 epochs, 64 hidden, top 10, dropout per image": {},
    "dropout per element (nn.Dropout)": {"dropout": "element"},
    "15 epochs": {"epochs": 15},
    "60 epochs": {"epochs": 60},
    "top 1 patch": {"top_k": 1},
    "top 3 patches": {"top_k": 3},
    "top 30 patches": {"top_k": 30},
    "32 hidden units": {"hidden": 32},
    "128 hidden units": {"hidden": 128},
    "+ grid position": {"position": True},
}
QUICK = ("project: 30 epochs, 64 hidden, top 10, dropout per image", "dropout per element (nn.Dropout)", "top 1 patch")


def with_position(patches: torch.Tensor) -> torch.Tensor:
    side = int(round(patches.shape[1] ** 0.5))
    y, x = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    position = torch.stack([x.flatten(), y.flatten()], 1).expand(len(patches), -1, -1)
    return torch.cat([patches.float(), position], 2)


def view(patches: torch.Tensor, settings: dict) -> torch.Tensor:
    """What the variant's classifier reads of ``patches``."""
    return with_position(patches) if settings.get("position") else patches


def fit(patches: torch.Tensor, targets: np.ndarray, seed: int, settings: dict) -> PatchClassifier:
    dropout = settings.get("dropout", "image")
    options = {key: value for key, value in settings.items() if key not in ("dropout", "position")}
    shared = patch_module.ImageDropout
    if dropout == "element":
        patch_module.ImageDropout = torch.nn.Dropout  # same constructor (p); one mask entry per element
    try:
        return PatchClassifier.fit(view(patches, settings), targets, seed=seed, **options)
    finally:
        patch_module.ImageDropout = shared


def thresholds(patches: torch.Tensor, y: np.ndarray, groups: np.ndarray, folds: int) -> list[dict]:
    """The out-of-fold threshold of the patch classifier, applied three ways (see the module's text); its rows."""
    results = []
    for rule in ("point", "lower_bound"):
        settings = EvaluateConfig(rule=rule).rule_settings
        found: dict[str, list[tuple[float, float, float]]] = {}
        for number, rows in enumerate(grouped_folds(y, groups, folds, seed=42)):
            rest, test = np.r_[rows["train"], rows["val"]], rows["test"]
            held_out, inner_scores = np.full(len(y), np.nan), []
            for inner in grouped_folds(y[rest], groups[rest], 5, seed=42 + number):
                fitted_on = rest[np.r_[inner["train"], inner["val"]]]
                classifier = PatchClassifier.fit(patches[fitted_on], y[fitted_on], seed=42 + number)
                held_out[rest[inner["test"]]] = classifier.scores(patches[rest[inner["test"]]])
                inner_scores.append(classifier.scores(patches[test]))
            threshold = select_threshold(y[rest], held_out[rest], rule, settings)["threshold"]
            arms = {"split fit (train rows)": PatchClassifier.fit(patches[rows["train"]], y[rows["train"]],
                                                                  seed=42 + number).scores(patches[test]),
                    "mean of the 5 inner fits": np.mean(inner_scores, 0),
                    "refit on train + validation": PatchClassifier.fit(patches[rest], y[rest],
                                                                       seed=42 + number).scores(patches[test])}
            for arm, scores in arms.items():
                measured = metrics_at_threshold(y[test], scores, threshold)
                oracle = oracle_recall(y[test], scores, settings.target_precision)
                found.setdefault(arm, []).append((measured["auroc"], measured["recall"], measured["precision"], oracle,
                                                  recall_efficiency(measured["recall"], oracle)))
        for arm, values in found.items():
            auroc, recall, precision, oracle, efficiency = (np.array(column, dtype=float) for column in zip(*values))
            print(f"{rule:11s} {arm:28s} test AUROC {auroc.mean():.3f} +- {auroc.std(ddof=1):.3f}, recall "
                  f"{recall.mean():.3f} +- {recall.std(ddof=1):.3f} of an oracle {oracle.mean():.3f} (recall efficiency "
                  f"{np.nanmean(efficiency):.3f} +- {np.nanstd(efficiency, ddof=1):.3f}), precision "
                  f"{np.nanmean(precision):.3f} (lowest {np.nanmin(precision):.3f}), >= 0.90 in "
                  f"{int((precision >= 0.9).sum())}/{len(precision)} folds", flush=True)
            results += [{"arm": f"threshold {rule} | {arm}", "fold": fold, "auroc": values[fold][0],
                         "recall": values[fold][1], "precision": values[fold][2], "oracle": values[fold][3],
                         "efficiency": values[fold][4]} for fold in range(len(values))]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    parser.add_argument("--quick", action="store_true", help="2 folds, 1 seed, 3 variants")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                        help="the arms, by their printed names (default all, or 3 with --quick)")
    parser.add_argument("--thresholds", action="store_true", help="the out-of-fold threshold, applied three ways")
    args = parser.parse_args(argv)
    chosen = args.variants or (QUICK if args.quick else list(VARIANTS))
    variants = {k: v for k, v in VARIANTS.items() if k in chosen}
    if args.quick:
        args.folds, args.seeds = 2, 1
    manifest, y, groups = harness.defects_dev()
    torch.set_num_threads(2)
    feats = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, "efficientnet_lite0", 14, args.cache)
    patches, pooled = feats["patches"], feats["pooled"].float().numpy()
    if args.thresholds:
        harness.write_results(args.results_file, "patch_classifier", thresholds(patches, y, groups, args.folds), args)
        return
    evaluate = EvaluateConfig()
    test_auc, val_auc, seconds, results = {}, {}, {}, []
    for number, rows in enumerate(grouped_folds(y, groups, args.folds, seed=42)):
        train, val, test = rows["train"], rows["val"], rows["test"]
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, 42).fit(
            pooled[train], y[train], pooled[val], y[val])
        memory = PatchMemory.fit(patches[train][y[train] == 1], evaluate.patch_coreset_fraction,
                                 evaluate.patch_memory_max, evaluate.patch_top_k, 42)
        for name, score in (("reference: LogisticBaseline, pooled", lambda r: baseline.score_samples(pooled[r])),
                            ("reference: PatchCore-style memory", lambda r: -memory.anomaly_scores(patches[r]))):
            test_auc.setdefault(name, []).append(roc_auc_score(y[test], score(test)))
            val_auc.setdefault(name, []).append(roc_auc_score(y[val], score(val)))
            results.append({"arm": name, "fold": number, "test_auroc": test_auc[name][-1],
                            "val_auroc": val_auc[name][-1]})
        for name, settings in variants.items():
            for seed in range(args.seeds):
                start = time.perf_counter()
                classifier = fit(patches[train], y[train], 42 + 10 * number + seed, settings)
                seconds.setdefault(name, []).append(time.perf_counter() - start)
                for split, found in ((test, test_auc), (val, val_auc)):
                    found.setdefault(name, []).append(roc_auc_score(y[split], classifier.scores(
                        view(patches[split], settings))))
                results.append({"arm": name, "fold": f"{number} seed {seed}", "test_auroc": test_auc[name][-1],
                                "val_auroc": val_auc[name][-1], "seconds": seconds[name][-1]})
        print(f"fold {number + 1} of {args.folds} done", flush=True)
    print(f"\ndefects-dev, efficientnet_lite0 patches (grid 14), {args.folds} grouped folds x {args.seeds} seeds")
    print(f"{'variant':58s} {'test AUROC':>15s} {'val AUROC':>15s} {'s per fit':>9s}")
    for name in test_auc:
        line = (f"{name:58s} {np.mean(test_auc[name]):.3f} +- {np.std(test_auc[name], ddof=1):.3f} "
                f"{np.mean(val_auc[name]):.3f} +- {np.std(val_auc[name], ddof=1):.3f}")
        print(line + (f" {statistics.median(seconds[name]):9.1f}" if name in seconds else ""))
    harness.write_results(args.results_file, "patch_classifier", results, args)


if __name__ == "__main__":
    main()
