"""The cross-validation's fold fits on plain arrays, as the array-level benchmarks run them: every
cross-validated scorer of the registry fitted on one fold by the path evaluate uses
(``Scorer.on_split``), without a Kedro catalog. Shared code, not a benchmark: benchmarks take these
names from :mod:`benchmarks.harness`, which imports this module on first use."""

from __future__ import annotations

import numpy as np
import torch

from image_classification.patches import PatchClassifier, grid_of
from image_classification.scorers import SCORERS, Features
from image_classification.scorers.patch_classifier import fit_patch_classifier
from image_classification.selection import cross_validation

NAMES = tuple(name for name, kind in SCORERS.items() if kind.cross_validated)


def _features(head_input: torch.Tensor, pooled: np.ndarray, patches: torch.Tensor | None,
              fine_patches: torch.Tensor | None) -> Features:
    return Features(head_input=head_input, pooled=np.asarray(pooled), patches=patches, fine_patches=fine_patches)


def _grid(patches: torch.Tensor | None) -> int:
    return grid_of(patches) if patches is not None else 0


def cross_validate(head_input: torch.Tensor, pooled: np.ndarray, patches: torch.Tensor | None, targets: np.ndarray,
                   groups: np.ndarray, folds: int, train_config, evaluate, seed: int,
                   fine_patches: torch.Tensor | None = None) -> dict:
    """evaluate's cross-validation (``selection.cross_validation.cross_validate``) of these arrays (the patch
    Gaussian is measured only with ``fine_patches``)."""
    return cross_validation.cross_validate(_features(head_input, pooled, patches, fine_patches), targets, groups, folds,
                                           train_config, evaluate, seed, grid=_grid(patches))


def fold_scores(head_input: torch.Tensor, pooled: np.ndarray, patches: torch.Tensor | None, rows: dict[str, np.ndarray],
                targets: np.ndarray, groups: np.ndarray, train_config, evaluate, seed: int,
                fits: dict | None = None, fine_patches: torch.Tensor | None = None
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every cross-validated scorer fitted on ``rows['train']`` (choosing on ``rows['val']``): the
    (validation, test) scores of those that could be fitted, by name; the fitted baseline's weights go
    into ``fits`` (when given) under ``baseline``."""
    split = cross_validation.fold_split(_features(head_input, pooled, patches, fine_patches), targets, groups, rows,
                                        grid=_grid(patches), train_config=train_config)
    val, test = {}, {}
    for name in NAMES:
        result = SCORERS[name].on_split(split, evaluate, seed)
        split = split.with_scores(name, result.val, result.test)
        if result.available or (name == "stack" and "patch" in val):
            val[name], test[name] = result.val, result.test
        if name == "baseline" and fits is not None:
            fits["baseline"] = result.fitted.weights
    return val, test


def held_out_patch_classifier(patches: torch.Tensor, rows: dict[str, np.ndarray], targets: np.ndarray, evaluate,
                              seed: int) -> tuple[PatchClassifier, np.ndarray]:
    """The patch classifier fitted on the fold's train and validation rows (it chooses nothing on
    validation) and its scores of ``rows['test']``: what the cross-validation's out-of-fold scores are."""
    fitted_on = np.concatenate([rows["train"], rows["val"]])
    classifier = fit_patch_classifier(patches[fitted_on], targets[fitted_on], evaluate, seed)
    return classifier, classifier.scores(patches[rows["test"]])
