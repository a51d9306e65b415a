"""Which candidate is served (``evaluate.operating_candidate``), and why.

Of the candidates predict can serve (the model; the baseline, the patch classifier and the fold stack
when the backbone is frozen): on small data, where cross-validation ran, the fold stack (global and
local evidence, on the scale of the out-of-fold scores its threshold is chosen on, and a global gate),
or without one whichever of the baseline and the patch classifier has the higher mean held-out average
precision over the folds (the record says how the model compares, and the run warns when it ranks
clearly better); on large data the model, unless the baseline's or the patch classifier's validation
average precision is clearly higher (the lower end of a paired bootstrap interval of the difference
above 0; of two clearly better, the one of higher validation average precision).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from image_classification.artefacts import Checkpoint
from image_classification.errors import ParameterError
from image_classification.metrics import format_figure
from image_classification.scorers import SCORERS, columns

logger = logging.getLogger(__name__)

ON_FOLDS = ("baseline", "patch_classifier", "fold_stack")  # their thresholds can be chosen on out-of-fold scores
ON_VALIDATION = ("baseline", "patch_classifier")  # may replace the model on large data


def scored(evaluation_scores: pd.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Targets and scores of one split's readable images."""
    rows = evaluation_scores[(evaluation_scores["split"] == split) & evaluation_scores[column].notna()]
    return rows["target"].to_numpy(dtype=int), rows[column].to_numpy(dtype=np.float64)


def paired_average_precision_interval(evaluation_scores: pd.DataFrame, evaluate, seed: int,
                                      column: str) -> tuple[float, float]:
    """Percentile bootstrap interval of one candidate's (``column``) validation AP minus the model's,
    on the same resampled validation images (``evaluate.bootstrap_samples``, ``evaluate.bootstrap_level``)."""
    rows = evaluation_scores[(evaluation_scores["split"] == "val") & evaluation_scores["score"].notna()
                             & evaluation_scores[column].notna()]
    targets, model, other = (rows[c].to_numpy(float) for c in ("target", "score", column))
    rng, differences = np.random.default_rng(seed), []
    for _ in range(evaluate.bootstrap_samples):
        pick = rng.integers(0, len(rows), len(rows))
        if 0 < targets[pick].sum() < len(pick):
            differences.append(average_precision_score(targets[pick], other[pick])
                               - average_precision_score(targets[pick], model[pick]))
    if not differences:
        return float("nan"), float("nan")
    tail = 100 * (1 - evaluate.bootstrap_level) / 2
    return float(np.percentile(differences, tail)), float(np.percentile(differences, 100 - tail))


def held_out_average_precision(out_of_fold_scores: pd.DataFrame, column: str) -> np.ndarray:
    """Per cross-validation fold, the average precision of one candidate's held-out scores (as
    cross_validation.json reports it per fold)."""
    return np.array([average_precision_score(fold["target"], fold[column])
                     for _, fold in out_of_fold_scores.groupby("fold", sort=True)], dtype=float)


def servable(evaluation_scores: pd.DataFrame, checkpoint: Checkpoint,
             served_weights: dict[str, dict | None]) -> tuple[list[str], dict[str, str]]:
    """The candidates predict can serve, and why each other servable kind cannot be served here."""
    names, why_not = ["model"], {}
    for name, kind in SCORERS.items():
        if not kind.servable or name == "model":
            continue
        if checkpoint.fine_tuned_blocks:
            why_not[name] = (f"the checkpoint's backbone has {checkpoint.fine_tuned_blocks} fine-tuned blocks, and the "
                             f"{name} was fitted on the frozen backbone's features")
        elif kind.column not in evaluation_scores or evaluation_scores[kind.column].isna().all():
            why_not[name] = f"there are no {name} scores" + (
                " (the cross-validation builds the fold stack, on small data only: cross_validation.json says "
                "whether it ran and why not)" if not kind.cross_validated else "")
        elif not served_weights.get(name):
            why_not[name] = f"no fitted {name} weights were given"
        else:
            names.append(name)
    return names, why_not


def operating_candidate(evaluation_scores: pd.DataFrame, out_of_fold_scores: pd.DataFrame, checkpoint: Checkpoint,
                        evaluate, seed: int, served_weights: dict[str, dict | None]) -> tuple[str, str, dict]:
    """The served candidate, why, and the figures compared."""
    column = columns()
    names, why_not = servable(evaluation_scores, checkpoint, served_weights)
    if evaluate.operating_candidate != "auto":
        if evaluate.operating_candidate not in names:
            raise ParameterError(f"evaluate.operating_candidate is {evaluate.operating_candidate}, but "
                                 f"{why_not[evaluate.operating_candidate]}; use auto or model")
        return evaluate.operating_candidate, "pinned by evaluate.operating_candidate", {}
    # small data: only the fold-fitted scores' thresholds can be chosen on out-of-fold scores (early-stopped heads of
    # different folds do not score on one scale); the fold stack puts its folds on one scale by construction
    on_folds = [name for name in ON_FOLDS
                if name in names and len(out_of_fold_scores) and column[name] in out_of_fold_scores]
    held_out = out_of_fold_scores.dropna(subset=["score", *(column[n] for n in on_folds)]) if on_folds else None
    if on_folds and held_out["fold"].nunique() >= 2:
        best, measure, details, compared = _on_folds(held_out, on_folds)
    else:
        best, measure, details, compared = _on_validation(evaluation_scores, names, evaluate, seed)
    why = f"auto: {measure} ({details})"
    for name, reason in why_not.items():
        why += f"; the {name.replace('_', ' ')} is not served because {reason}"
    return best, why, {"measure": measure, **compared}


def _on_folds(held_out: pd.DataFrame, on_folds: list[str]) -> tuple[str, str, str, dict]:
    column = columns()
    per_fold = {name: held_out_average_precision(held_out, column[name]) for name in ["model", *on_folds]}
    best = "fold_stack" if "fold_stack" in on_folds else max(on_folds, key=lambda name: per_fold[name].mean())
    difference = per_fold["model"] - per_fold[best]
    margin = 2 * difference.std(ddof=1) / np.sqrt(len(difference))
    compared = {"held_out_average_precision": {name: {"per_fold": values.tolist(), "mean": float(values.mean())}
                                               for name, values in per_fold.items()},
                f"model_minus_{best}_held_out_average_precision": {
                    "per_fold": difference.tolist(), "mean": float(difference.mean()),
                    "two_standard_errors": float(margin)}}
    if best == "fold_stack":
        measure = ("on small data the fold stack: the baseline's (global) and the patch classifier's (local) fold "
                   "fits, each calibrated on the images its fold did not see, stacked, averaged over the folds and "
                   "gated, so that its out-of-fold scores, on which the threshold is chosen, are on the served "
                   "score's scale (docs/decisions/0032 measures it beside the others)")
    else:
        measure = ("on small data the one of the baseline and the patch classifier with the higher mean held-out "
                   "average precision over the folds; their thresholds are chosen on out-of-fold scores (the "
                   "model's cannot be: its fold heads score on different scales; docs/decisions/0018 "
                   "measures both)")
    details = (", ".join(f"{name} {per_fold[name].mean():.3f}" for name in per_fold)
               + f" held-out average precision over {len(difference)} folds")
    if difference.mean() > margin:
        details += (f"; the model ranks clearly better on this data (by {difference.mean():+.3f}, two standard "
                    f"errors {margin:.3f}): evaluate.operating_candidate=model serves it, for more recall at a "
                    "less certain precision")
        logger.warning("Operating point: %s", details)
    return best, measure, details, compared


def _on_validation(evaluation_scores: pd.DataFrame, names: list[str], evaluate, seed: int) -> tuple[str, str, str, dict]:
    # large data: validation is big enough to certify the model's threshold, and any other
    # servable candidate must rank it clearly better there to replace it
    column = columns()
    others = [name for name in ON_VALIDATION if name in names]
    compared = {name: float(average_precision_score(*scored(evaluation_scores, "val", column[name])))
                for name in ("model", *others)}
    measure = ("the model, unless the baseline's or the patch classifier's validation average precision is "
               "clearly higher")
    details = ", ".join(f"{name} {format_figure(value)}" for name, value in compared.items())
    clearly = []
    for name in others:
        low, high = paired_average_precision_interval(evaluation_scores, evaluate, seed, column[name])
        compared[f"{name}_minus_model_validation_average_precision_interval"] = [low, high]
        details += (f"; {name.replace('_', ' ')} minus model {100 * evaluate.bootstrap_level:.0f}% interval "
                    f"[{low:+.4f}, {high:+.4f}]")
        if low > 0:
            clearly.append(name)
    best = max(clearly, key=lambda name: compared[name]) if clearly else "model"
    return best, measure, details, compared
