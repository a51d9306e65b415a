"""Do defect maps point at the defect? Synthetic defects pasted into held-out good cells of defects-dev.

Per grouped fold (the five folds by module of the other defects-dev benchmarks), ``--per-fold`` good
cells of the test fold each get one dark defect pasted in (benchmarks/pasted_defects.py: cracks, spots
and scratches a few pixels wide, in turn), are written as PNG and run through the pipeline's backbone
pass (``extract_backbone_features``, efficientnet_lite0, ImageNet weights, patch grid 14, as the
feature cache of the original images was made). Each arm is fitted on the fold's other images
(train + validation rows, the original images' cached features):

- ``patch classifier``: ``fit_patch_classifier`` with ``EvaluateConfig()``'s settings on the images'
  real labels; its map is the patch logits (``PatchClassifierScorer.defect_map``);
- ``patch memory``: ``PatchMemory`` of the valid images as ``PatchMemoryScorer.fit`` fits it; its map is
  each patch's distance to the memory (``PatchMemoryScorer.defect_map``);
- ``patch Gaussian``: ``PatchGaussian`` of the valid images' fine patch vectors (the stride-4 and -8 maps
  on the 28 x 28 grid, ``PatchGaussianScorer.of_valid``, as evaluate fits it); its map
  (``PatchGaussianScorer.defect_map``) is each 14 x 14 cell's highest Mahalanobis distance of a fine patch
  from the valid mean fine patch at its position, one covariance shared by all positions, on the overlays'
  log-odds scale; the served map (``evaluate.defect_map_from: patch_gaussian``, docs/decisions/0037 and
  0038), marked ``(served map)``; beside it the same Gaussian on the 14 x 14 patch vectors (the map served
  before decision 0038), and ``covariance per position`` on those, PaDiM as published (a covariance per
  grid position: grid² x C² numbers, 18 MB per fit at grid 14, too large to serve as JSON);
- ``fold stack`` (with ``--fold-stack``, five more fits per fold): the served score on small data, built
  as evaluate's cross-validation builds it on these images (five inner grouped folds, baseline and patch
  classifier fits, Platt calibration, stacker, gate); its own map is ``FoldStack.patch_map`` (the served
  map with ``evaluate.defect_map_from: served``). Beside it,
  the fold stack of the same inner fits with their patch Gaussians as a third input
  (``evaluate.fold_stack_patch_gaussian``, off: docs/decisions/0036).

Figures per arm, mean +- sd over folds: pointing accuracy (the share of pasted images whose map maximum
lies on a patch the defect touches, dilated by one patch), pixel AUROC of the upsampled maps over every
pixel of the pasted images, and an image-level sanity figure: the AUROC of the arm's image score
separating the pasted images from the same cells clean. Each map is also read two other ways, side by
side: smoothed by a 3x3 mean over the grid before its maximum and upsampling, and upsampled without
interpolation (each patch's value over its own block). Nothing is chosen on these cells.

    python -m benchmarks.defect_maps                  # ~10-15 min on 2 cores
    python -m benchmarks.defect_maps --fold-stack     # ~30-40 min (2428 s on a busy 2-core VM)
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from benchmarks import harness
from benchmarks.harness import (KINDS, build_fold_stack, extract_backbone_features, fit_patch_classifier, fold_split,
                                grouped_folds, paste_defect)
from image_classification import defect_maps
from image_classification.backbones import backbone_spec, build_backbone
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.patch_gaussian import PatchGaussian
from image_classification.patches import PatchMemory
from image_classification.scorers import Features, PatchGaussianScorer

BACKBONE, GRID = "efficientnet_lite0", 14
READINGS = ("as drawn (bilinear)", "3x3 smoothed grid", "patch blocks (nearest)")
# the arm whose map predict serves by default (evaluate.defect_map_from), and the served score's own map
SERVED_MAP = EvaluateConfig().defect_map_from
GAUSSIAN = "patch Gaussian" + (" (served map)" if SERVED_MAP == "patch_gaussian" else "")
FOLD_STACK = "fold stack (served score" + ("; served map)" if SERVED_MAP == "served" else ")")


def smoothed(values: np.ndarray) -> np.ndarray:
    """A flat map averaged over each patch's 3x3 neighbourhood (the border's own patches only)."""
    grid = torch.from_numpy(defect_maps.as_grid(values).copy())[None, None]
    total = torch.nn.functional.avg_pool2d(grid, 3, 1, 1, count_include_pad=False)
    return total[0, 0].flatten().numpy()


def blocks(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flat map spread over (height, width) pixels, each patch's value over the block it covers."""
    grid = defect_maps.as_grid(values)
    rows = np.minimum(np.arange(height) * grid.shape[0] // height, grid.shape[0] - 1)
    columns = np.minimum(np.arange(width) * grid.shape[1] // width, grid.shape[1] - 1)
    return grid[rows][:, columns]


def per_position_distances(valid: torch.Tensor, patches: torch.Tensor) -> np.ndarray:
    """(N, P) Mahalanobis distance of each patch from the valid mean at its position, with a covariance of
    its own per position (PaDiM as published, regularised as ``PatchGaussian``)."""
    from image_classification.patch_gaussian import REGULARISATION

    valid, patches = valid.double(), patches.double()
    mean = valid.mean(0)
    out = np.empty(patches.shape[:2])
    for position in range(valid.shape[1]):
        deviation = valid[:, position] - mean[position]
        covariance = deviation.T @ deviation / (len(valid) - 1) + REGULARISATION * torch.eye(valid.shape[2],
                                                                                          dtype=torch.float64)
        difference = patches[:, position] - mean[position]
        out[:, position] = ((difference @ torch.linalg.inv(covariance)) * difference).sum(1).clamp_min(0).sqrt().numpy()
    return out


def map_figures(maps: np.ndarray, masks: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """Per reading of the maps: (pointing accuracy, pixel AUROC) against the masks."""
    found = {}
    for reading in READINGS:
        drawn = [smoothed(m) for m in maps] if reading == "3x3 smoothed grid" else list(maps)
        hits = np.mean([defect_maps.pointing_hit(m, mask, dilate=1) for m, mask in zip(drawn, masks)])
        if reading == "patch blocks (nearest)":
            truth = np.concatenate([mask.ravel() for mask in masks])
            spread = np.concatenate([blocks(m, *mask.shape).ravel() for m, mask in zip(drawn, masks)])
            auroc = float(roc_auc_score(truth, spread))
        else:
            auroc = defect_maps.pixel_auroc(drawn, masks)
        found[reading] = (float(hits), auroc)
    return found


def pasted_cells(manifest, rows: np.ndarray, per_fold: int, seed: int, folder: Path) -> tuple[np.ndarray, list, list]:
    """``per_fold`` of ``rows`` (good cells), each with a defect pasted in (kinds in turn), written to ``folder``:
    the rows chosen, the masks and the kinds."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, size=min(per_fold, len(rows)), replace=False))
    masks, kinds = [], []
    for position, row in enumerate(chosen):
        image = np.asarray(Image.open(harness.DEFECTS_DEV / manifest["path"].iloc[row]))
        pasted, mask, kind = paste_defect(image, seed * 100_000 + int(row), KINDS[position % len(KINDS)])
        Image.fromarray(pasted).save(folder / f"{row:05d}.png")
        masks.append(mask)
        kinds.append(kind)
    return chosen, masks, kinds


def fold_stack_map(pooled: np.ndarray, patches: torch.Tensor, y: np.ndarray, groups: np.ndarray, evaluate,
                   seed: int):
    """The fold stack evaluate's cross-validation would build on these images (baseline and patch
    classifier fits of five inner grouped folds, calibrated, stacked, gated): its cross-validation loop
    (``selection.cross_validation.cross_validate``) for these scorers alone. Returns the stack with the
    patch Gaussian input and the stack of the same fits without it (served by default)."""
    from image_classification.scorers import SCORERS, Features, Labelled
    from image_classification.global_gate import GlobalGate
    from benchmarks.harness import STACKED_GAUSSIAN

    features = Features(pooled=pooled, patches=patches)
    held_out = {"fold": np.full(len(y), -1), "baseline": np.full(len(y), np.nan),
                "patch_classifier": np.full(len(y), np.nan), STACKED_GAUSSIAN: np.full(len(y), np.nan),
                "global_gate_passes": np.ones(len(y), bool)}
    fits: dict[str, list] = {"baseline": [], "patch_classifier": [], "patch_gaussian": []}
    for number, rows in enumerate(grouped_folds(y, groups, evaluate.cv_folds, seed)):
        split = fold_split(features, y, groups, rows, grid=GRID)
        baseline = SCORERS["baseline"].fit(split, evaluate, seed + number)
        rest = np.concatenate([rows["train"], rows["val"]])
        train_and_val = Labelled(features.take(rest), y[rest], groups[rest])
        classifier = SCORERS["patch_classifier"].fit(replace(split, train=train_and_val), evaluate, seed + number)
        # the stack's third input reads the 14 x 14 patch vectors, as the cross-validation fits it
        gaussian = PatchGaussian.fit(patches[rest][y[rest] == 1])
        held_out[STACKED_GAUSSIAN][rows["test"]] = -gaussian.anomaly_scores(patches[rows["test"]])
        fits["patch_gaussian"].append(gaussian)
        held_out["fold"][rows["test"]] = number
        held_out["baseline"][rows["test"]] = baseline.score_samples(split.test)
        held_out["patch_classifier"][rows["test"]] = classifier.score_samples(split.test)
        gate = GlobalGate.fit(patches[rest[y[rest] == 1]])
        held_out["global_gate_passes"][rows["test"]] = gate.passes(patches[rows["test"]])
        fits["baseline"].append(baseline)
        fits["patch_classifier"].append(classifier)
    without = {name: value for name, value in fits.items() if name != "patch_gaussian"}
    return build_fold_stack(held_out, y, fits, patches, seed)[0], build_fold_stack(held_out, y, without, patches, seed)[0]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--per-fold", type=int, default=80, help="good test cells given a defect, per fold")
    parser.add_argument("--seed", type=int, default=harness.SEED)
    parser.add_argument("--fold-stack", action="store_true", help="also the served fold stack (5 more fits a fold)")
    parser.add_argument("--cache", type=Path, default=harness.DEFECTS_DEV_CACHE)
    args = parser.parse_args(argv)
    harness.quiet_progress()
    torch.set_num_threads(2)
    started = time.perf_counter()
    manifest, y, groups = harness.defects_dev()
    cached = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, BACKBONE, GRID, args.cache)
    patches, fine, pooled = cached["patches"], cached["fine_patches"], cached["pooled"].float().numpy()
    evaluate = EvaluateConfig()
    folds = list(grouped_folds(y, groups, args.folds, seed=args.seed))
    with tempfile.TemporaryDirectory(prefix="defect_maps_") as temporary:
        folder, cells = Path(temporary), []
        for number, rows in enumerate(folds):
            good = rows["test"][y[rows["test"]] == 1]
            cells.append(pasted_cells(manifest, good, args.per_fold, args.seed + number, folder))
        paths = sorted(str(path) for path in folder.glob("*.png"))
        order = {int(Path(path).stem): position for position, path in enumerate(paths)}
        pass_started = time.perf_counter()
        torch.manual_seed(0)
        extracted = extract_backbone_features(build_backbone(BACKBONE), paths, backbone_spec(BACKBONE),
                                              torch.device("cpu"), batch_size=32, patch_grid=GRID)
        print(f"{len(paths)} pasted images through the backbone ({extracted['backend']}) in "
              f"{time.perf_counter() - pass_started:.0f} s")
    figures: dict[str, dict[str, list]] = {}
    by_kind: dict[str, dict[str, list]] = {}
    results = []
    for number, (rows, (chosen, masks, kinds)) in enumerate(zip(folds, cells)):
        rest = np.concatenate([rows["train"], rows["val"]])
        pasted = extracted["patches"][[order[int(row)] for row in chosen]]
        pasted_fine = extracted["fine_patches"][[order[int(row)] for row in chosen]]
        clean = patches[chosen]
        seed = args.seed + number
        classifier = fit_patch_classifier(patches[rest], y[rest], evaluate, seed)
        memory = PatchMemory.fit(patches[rest][y[rest] == 1], evaluate.patch_coreset_fraction,
                                 evaluate.patch_memory_max, evaluate.patch_top_k, seed)
        served_gaussian = PatchGaussianScorer.of_valid(fine[rest][y[rest] == 1], GRID)  # as evaluate fits it
        gaussian = served_gaussian.gaussian
        coarse = PatchGaussian.fit(patches[rest][y[rest] == 1])
        pasted_pooled = extracted["pooled"][[order[int(row)] for row in chosen]].float().numpy()
        # per arm: the pasted images' maps, and image defect scores (higher: more defective) clean and pasted
        arms = {"patch classifier": (classifier.patch_logits(pasted).numpy(), -classifier.scores(clean),
                                     -classifier.scores(pasted)),
                "patch memory": (memory.distances(pasted).numpy(), memory.anomaly_scores(clean),
                                 memory.anomaly_scores(pasted)),
                GAUSSIAN: (served_gaussian.defect_map(Features(fine_patches=pasted_fine)),
                           gaussian.anomaly_scores(fine[chosen]), gaussian.anomaly_scores(pasted_fine)),
                "patch Gaussian on the 14x14 patch vectors": (coarse.distances(pasted).numpy(),
                                                              coarse.anomaly_scores(clean), coarse.anomaly_scores(pasted))}
        per_position = per_position_distances(patches[rest][y[rest] == 1], torch.cat([clean, pasted]))
        arms["patch Gaussian on them, covariance per position"] = (per_position[len(chosen):], per_position[:len(chosen)].max(1),
                                                           per_position[len(chosen):].max(1))
        if args.fold_stack:
            with_gaussian, without = fold_stack_map(pooled[rest], patches[rest], y[rest], groups[rest], evaluate, seed)
            print(f"  the map weights of the fold stack with the patch Gaussian: "
                  f"{with_gaussian.describe()['map_weights']}", flush=True)
            for arm, built in ((FOLD_STACK, without), ("fold stack + patch Gaussian", with_gaussian)):
                arms[arm] = (built.patch_map(pasted), -built.scores(pooled[chosen], clean),
                             -built.scores(pasted_pooled, pasted))
        for arm, (maps, clean_scores, pasted_scores) in arms.items():
            image_auroc = roc_auc_score(np.r_[np.zeros(len(chosen)), np.ones(len(chosen))],
                                        np.r_[clean_scores, pasted_scores])
            for reading, (pointing, pixel) in map_figures(maps, masks).items():
                name = f"{arm} | {reading}"
                for key, value in (("pointing", pointing), ("pixel_auroc", pixel), ("image_auroc", image_auroc)):
                    figures.setdefault(name, {}).setdefault(key, []).append(value)
                results.append({"arm": name, "fold": number, "images": len(chosen), "pointing": pointing,
                                "pixel_auroc": pixel, "image_auroc": image_auroc})
            for kind in KINDS:
                picked = [i for i, k in enumerate(kinds) if k == kind]
                hits = [defect_maps.pointing_hit(maps[i], masks[i], dilate=1) for i in picked]
                by_kind.setdefault(arm, {}).setdefault(kind, []).extend(hits)
        print(f"fold {number + 1} of {args.folds} done ({len(chosen)} pasted cells, "
              f"{time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\ndefects-dev, {BACKBONE} patches (grid {GRID}), {args.folds} grouped folds, {args.per_fold} pasted good "
          f"test cells per fold, seed {args.seed}; mean +- sd over folds")
    print(f"{'arm | map reading':58s} {'pointing':>15s} {'pixel AUROC':>15s} {'image AUROC':>15s}  per-fold pointing")
    for name, found in figures.items():
        line = " ".join(f"{np.mean(found[key]):.3f} +- {np.std(found[key], ddof=1) if len(found[key]) > 1 else 0:.3f}"
                        for key in ("pointing", "pixel_auroc", "image_auroc"))
        print(f"{name:58s} {line}  {' '.join(f'{v:.2f}' for v in found['pointing'])}")
    print("\npointing accuracy by defect kind (as drawn, all folds pooled):")
    for arm, kinds_found in by_kind.items():
        print(f"  {arm:24s} " + ", ".join(f"{kind} {np.mean(hits):.3f} (n={len(hits)})"
                                          for kind, hits in kinds_found.items()))
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    harness.write_results(args.results_file, "defect_maps", results, args)


if __name__ == "__main__":
    main()
