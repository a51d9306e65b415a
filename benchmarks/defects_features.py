"""How much the frozen features themselves allow on inspection data: input size, backbone, contrast and pooling.

defects_quality.py shows every candidate score of the pipeline at a test AUROC of 0.85-0.88 on
../shared/datasets/defects-dev, far from the 0.95 inspection needs. This benchmark asks whether a
different way of reading the images into the frozen backbone would lift that ceiling before any
training: for each variant it runs the frozen backbone once over the 1,665 photos and fits the
project's LogisticBaseline (standardised features, balanced classes, C chosen on validation) on the
same five grouped folds as defects_quality.py (``candidates.grouped_folds``, seed 42), and prints the
mean +- sd and the per-fold test AUROC side by side.

Variants (``--variants``; each is BACKBONE@SIZE[/CONTRAST]):

- input size: the backbone's own (224 px for efficientnet_lite0, 260 for efficientnet_lite2), the
  photos' native 300 px, and larger (448, 384): small cracks cover more of the receptive field;
- contrast: none (the pipeline's way), ``autocontrast`` (Pillow, 1% cut at both ends) or
  ``equalize`` (histogram equalisation), applied to the grayscale photo first: modules differ in
  brightness, and folds are cut by module;
- pooling of the last feature map: ``mean`` (the pipeline's pooled features), ``max`` and GeM (p=3),
  which keep the strongest local response instead of averaging it away, and mean and max side by side.

The default variant also gets a row with the cell type as a finer label (``kind``: good/defect x
mono/poly): a four-class logistic regression whose score is the probability of the two good kinds.

    python -m benchmarks.defects_features                # 7 variants (~30 min on 2 cores; eager PyTorch)
    python -m benchmarks.defects_features --variants efficientnet_lite0@224 efficientnet_lite0@300

Feature maps' poolings are cached per variant in --cache-dir and reused. The pass is the benchmark's
own eager loop, not the pipeline's ``extract_backbone_features``: it needs a contrast step before the
transform and the whole last map for max and GeM pooling, which the pipeline does not keep.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ImageOps
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks import harness
from benchmarks.harness import grouped_folds
from image_classification.backbones import backbone_spec, build_backbone
from image_classification.scorers.baseline import LogisticBaseline
from image_classification.images import load_rgb
from image_classification.model import preprocess_transform
from image_classification.parameters.evaluate import EvaluateConfig

VARIANTS = ("efficientnet_lite0@224", "efficientnet_lite0@300", "efficientnet_lite0@448", "efficientnet_lite2@260",
            "efficientnet_lite2@384", "efficientnet_lite0@224/autocontrast", "efficientnet_lite0@224/equalize")
CONTRAST = {"none": lambda image: image, "autocontrast": lambda image: ImageOps.autocontrast(image, cutoff=1),
            "equalize": ImageOps.equalize}


def parse(variant: str) -> tuple[str, int, str]:
    name, rest = variant.split("@")
    size, _, contrast = rest.partition("/")
    if (contrast or "none") not in CONTRAST:
        raise SystemExit(f"unknown contrast '{contrast}' in {variant}: use one of {', '.join(CONTRAST)}")
    return name, int(size), contrast or "none"


def poolings(variant: str, paths: list[str], cache_dir: Path, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Mean, max and GeM pooling of the frozen backbone's last map for every photo, cached."""
    def extract() -> dict:
        name, size, contrast = parse(variant)
        spec = backbone_spec(name)
        spec = dataclasses.replace(spec, input_size=size, feature_size=-(-size // 32))
        transform, backbone = preprocess_transform(spec), build_backbone(name).eval()
        start, maps = time.perf_counter(), {"mean": [], "max": [], "gem": []}
        with torch.inference_mode():
            for first in range(0, len(paths), batch_size):
                batch = torch.stack([transform(CONTRAST[contrast](load_rgb(p, keep_gray=True).convert("L")))
                                     for p in paths[first:first + batch_size]])
                fmap = backbone(batch).float()
                maps["mean"].append(fmap.mean((2, 3)))
                maps["max"].append(fmap.amax((2, 3)))
                maps["gem"].append(fmap.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3))
        print(f"{variant}: {len(paths)} photos through the frozen backbone in {time.perf_counter() - start:.0f} s",
              flush=True)
        return {"tensors": {k: torch.cat(v) for k, v in maps.items()}, "metadata": {}}

    cache = cache_dir / f"defects_features_{variant.replace('@', '_').replace('/', '_')}.safetensors"
    key = f"{variant}|{len(paths)} photos|{paths[0]}|{paths[-1]}"
    return {k: v.numpy() for k, v in harness.feature_cache(cache, key, extract)["tensors"].items()}


def kinds_probability(model, features: np.ndarray, kinds: list[str]) -> np.ndarray:
    """A fitted multi-class model's summed probability of ``kinds`` for each row of ``features``."""
    probabilities = model.predict_proba(features)
    return probabilities[:, [list(model.classes_).index(k) for k in kinds]].sum(axis=1)


def logistic_aurocs(features: np.ndarray, y: np.ndarray, groups: np.ndarray, c_grid: tuple[float, ...],
                    fine: np.ndarray | None = None) -> list[float]:
    """Test AUROC per grouped fold of logistic regression with C chosen on the fold's validation split;
    with ``fine`` labels a multi-class fit whose score is the summed probability of the valid kinds."""
    aurocs = []
    for rows in grouped_folds(y, groups, 5, seed=42):
        train, val, test = rows["train"], rows["val"], rows["test"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if fine is None:
                model = LogisticBaseline(c_grid, 0.9, 42).fit(features[train], y[train], features[val], y[val])
                aurocs.append(roc_auc_score(y[test], model.score_samples(features[test])))
                continue
            valid_kinds = sorted(set(fine[y == 1]))
            fitted = {c: make_pipeline(StandardScaler(),
                                       LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
                      .fit(features[train], fine[train]) for c in c_grid}
            best = max(c_grid, key=lambda c: roc_auc_score(
                y[val], kinds_probability(fitted[c], features[val], valid_kinds)))
            aurocs.append(roc_auc_score(y[test], kinds_probability(fitted[best], features[test], valid_kinds)))
    return aurocs


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=harness.DEFECTS_DEV)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    manifest, y, groups = harness.defects_dev(args.data)
    for variant in args.variants:
        parse(variant)
    torch.set_num_threads(args.threads)
    paths = [str(args.data / p) for p in manifest["path"]]
    c_grid = EvaluateConfig().baseline_c_grid
    rows = []
    for variant in args.variants:
        pooled = poolings(variant, paths, args.cache_dir)
        choices = {"mean": pooled["mean"], "max": pooled["max"], "gem": pooled["gem"],
                   "mean+max": np.hstack([pooled["mean"], pooled["max"]])}
        for pooling, features in choices.items():
            rows.append((variant, pooling, "valid/invalid", logistic_aurocs(features, y, groups, c_grid)))
            print(f"{variant:40s} {pooling:9s} {np.mean(rows[-1][-1]):.3f}", flush=True)
        if variant == args.variants[0]:
            rows.append((variant, "mean", "kind (4 classes)",
                         logistic_aurocs(pooled["mean"], y, groups, c_grid, manifest["kind"].to_numpy())))
    print(f"\n{args.data.name}: logistic regression on frozen features, 5 grouped folds (seed 42), C from "
          f"{list(c_grid)} on validation")
    print(f"{'variant':40s} {'pooling':9s} {'labels':17s} {'test AUROC':>15s}   per fold")
    for variant, pooling, labels, aurocs in rows:
        print(f"{variant:40s} {pooling:9s} {labels:17s} {np.mean(aurocs):.3f} +- {np.std(aurocs, ddof=1):.3f}   "
              + " ".join(f"{a:.3f}" for a in aurocs))
    harness.write_results(args.results_file, "defects_features", [
        {"arm": f"{variant} | {pooling} | {labels}", "fold": fold, "test_auroc": auroc}
        for variant, pooling, labels, aurocs in rows for fold, auroc in enumerate(aurocs)], args)


if __name__ == "__main__":
    main()
