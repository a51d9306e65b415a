"""Does the patch classifier gain from more views of each photo? Orientations and input sizes, side by side.

On defects-dev's five grouped folds (those of ``defects_quality.py``), the project's patch classifier
(``PatchClassifier`` with its defaults, fitted on each fold's train rows) against:

- **orientations**: the photos' patch vectors under the 8 flips and quarter turns (each orientation
  written as a PNG and run through ``extract_backbone_features``, as train extracts), used to train
  on all 8 (``aug8``, 4 or 10 epochs over 8x the rows), to score the test photo as the mean logit over
  its 8 orientations (``TTA8``), or both; the baseline (LogisticBaseline on pooled features) the same way;
- **input sizes**: the photos read at 300 px (their native size) and 448 px instead of the backbone's
  224, with patch grids 14, 19 and 28;
- **ensembles** of the classifier over sizes (224 + 300, 224 + 300 + 448 at grid 28), and of 3 seeds.

Per variant: mean +- sd of test and validation AUROC over the folds, and the per-fold test AUROC.
Choose on the validation column. Extraction takes 8 passes plus 4 (about 3 min on 2 cores with ONNX
Runtime), the fits about 5 min.

    python -m benchmarks.patch_views
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from benchmarks import harness
from benchmarks.harness import extract_backbone_features, grouped_folds
from image_classification.backbones import backbone_spec, build_backbone
from image_classification.scorers.baseline import LogisticBaseline
from image_classification.parameters.evaluate import EvaluateConfig
from image_classification.patches import PatchClassifier

ORIENTATIONS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
                Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE,
                Image.Transpose.TRANSVERSE)
SIZES = ((300, 14), (300, 19), (448, 14), (448, 28))


def extract(paths: list[str], size: int, grid: int) -> dict[str, torch.Tensor]:
    backbone = "efficientnet_lite0"
    spec = dataclasses.replace(backbone_spec(backbone), input_size=size)
    out = extract_backbone_features(build_backbone(backbone), paths, spec, torch.device("cpu"), batch_size=32,
                                    patch_grid=grid, threads=2, workers=0)
    if any(out["errors"]):
        raise SystemExit(f"unreadable images: {[e for e in out['errors'] if e][:3]}")
    return {"patches": out["patches"], "pooled": out["pooled"].float().numpy()}


def logit(scores: np.ndarray) -> np.ndarray:
    scores = np.clip(scores, 1e-7, 1 - 1e-7)
    return np.log(scores) - np.log1p(-scores)


def main(argv: list[str] | None = None) -> None:
    args = harness.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    manifest, y, groups = harness.defects_dev()
    torch.set_num_threads(2)
    data = harness.DEFECTS_DEV
    start = time.perf_counter()
    views = []
    with tempfile.TemporaryDirectory() as folder:
        for number, orientation in enumerate(ORIENTATIONS):
            paths = []
            for path in manifest["path"]:
                target = Path(folder) / f"{number}_{path.replace('/', '_')}"
                with Image.open(data / path) as image:
                    (image if orientation is None else image.transpose(orientation)).save(target)
                paths.append(str(target))
            views.append(extract(paths, 224, 14))
    sizes = {f"{size} px, grid {grid}": extract([str(data / p) for p in manifest["path"]], size, grid)
             for size, grid in SIZES}
    print(f"extracted 8 orientations and {len(SIZES)} sizes in {time.perf_counter() - start:.0f} s", flush=True)
    sizes = {"224 px, grid 14 (the pipeline)": views[0], **sizes}
    evaluate = EvaluateConfig()
    found: dict[str, dict[str, list[float]]] = {}
    for number, rows in enumerate(grouped_folds(y, groups, 5, seed=42)):
        train, val, test = rows["train"], rows["val"], rows["test"]
        seed = 42 + number

        def add(name, score) -> None:
            for split, index in (("test", test), ("val", val)):
                found.setdefault(name, {}).setdefault(split, []).append(roc_auc_score(y[index], score(index)))

        plain = PatchClassifier.fit(views[0]["patches"][train], y[train], seed=seed)
        add("patch classifier (the pipeline)", lambda r: plain.scores(views[0]["patches"][r]))
        add("+ TTA8", lambda r: np.mean([logit(plain.scores(v["patches"][r])) for v in views], 0))
        stacked, targets = torch.cat([v["patches"][train] for v in views]), np.tile(y[train], len(views))
        for epochs in (4, 10):
            augmented = PatchClassifier.fit(stacked, targets, epochs=epochs, seed=seed)
            add(f"aug8, {epochs} epochs", lambda r, c=augmented: c.scores(views[0]["patches"][r]))
            add(f"aug8, {epochs} epochs + TTA8",
                lambda r, c=augmented: np.mean([logit(c.scores(v["patches"][r])) for v in views], 0))
        pooled = views[0]["pooled"]
        baseline = LogisticBaseline(evaluate.baseline_c_grid, evaluate.target_precision, 42).fit(
            pooled[train], y[train], pooled[val], y[val])
        add("baseline", lambda r: baseline.score_samples(pooled[r]))
        add("baseline + TTA8", lambda r: np.mean([baseline.score_samples(v["pooled"][r]) for v in views], 0))
        fits = {}
        for name, features in sizes.items():
            fits[name] = PatchClassifier.fit(features["patches"][train], y[train], seed=seed)
            if name != "224 px, grid 14 (the pipeline)":
                add(f"patch classifier at {name}", lambda r, n=name: fits[n].scores(sizes[n]["patches"][r]))
        for members in (("224 px, grid 14 (the pipeline)", "300 px, grid 14"),
                        ("224 px, grid 14 (the pipeline)", "300 px, grid 14", "448 px, grid 28")):
            add("mean logit of " + " + ".join(m.split(",")[0] for m in members),
                lambda r, ms=members: np.sum([logit(fits[m].scores(sizes[m]["patches"][r])) for m in ms], 0))
        seeds = [PatchClassifier.fit(views[0]["patches"][train], y[train], seed=1000 + number + k) for k in range(3)]
        add("mean logit of 3 seeds", lambda r: np.sum([logit(c.scores(views[0]["patches"][r])) for c in seeds], 0))
        print(f"fold {number + 1} of 5 done", flush=True)
    print("\ndefects-dev, efficientnet_lite0, 5 grouped folds (test and validation AUROC, mean +- sd)")
    print(f"{'variant':52s} {'test AUROC':>15s} {'val AUROC':>15s}  per fold (test)")
    for name, splits in found.items():
        t, v = np.array(splits["test"]), np.array(splits["val"])
        print(f"{name:52s} {t.mean():.3f} +- {t.std(ddof=1):.3f} {v.mean():.3f} +- {v.std(ddof=1):.3f}  "
              + " ".join(f"{value:.3f}" for value in t))
    harness.write_results(args.results_file, "patch_views", [
        {"arm": name, "fold": fold, "test_auroc": splits["test"][fold], "val_auroc": splits["val"][fold]}
        for name, splits in found.items() for fold in range(len(splits["test"]))], args)


if __name__ == "__main__":
    main()
