"""``stack``: a logistic regression over the scores before it (the model's and the baseline's logits,
the patch score and, where there is one, the patch classifier's logit), fitted on validation. Its
validation scores are cross-fitted over validation groups (each image scored by a stacker that never
saw its group), so a threshold chosen on them is as honest as the others'. Measured; not served."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from image_classification.scorers.base import Features, Scored, Scorer, Split, probability_logit, register

INPUTS = ("model", "baseline", "patch", "patch_classifier")


def stack_inputs(scores: dict[str, np.ndarray]) -> np.ndarray:
    """The stacker's inputs: the model's and the baseline's logits, the patch score and, where there
    is one, the patch classifier's logit."""
    columns = [probability_logit(scores["model"]), probability_logit(scores["baseline"]),
               np.asarray(scores["patch"], dtype=float)]
    patch_classifier = scores.get("patch_classifier")
    if patch_classifier is not None and not np.isnan(np.asarray(patch_classifier, dtype=float)).all():
        columns.append(probability_logit(patch_classifier))
    return np.column_stack(columns)


def stack_scores(val_inputs: np.ndarray, val_targets: np.ndarray, val_groups: np.ndarray, other_inputs: np.ndarray,
                 seed: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A stacker's validation scores, cross-fitted over validation groups (each image scored by a
    stacker that never saw its group), and its scores of ``other_inputs`` from the stacker fitted on
    all of validation; or NaN and the reason there is none."""
    nothing = (np.full(len(val_inputs), np.nan), np.full(len(other_inputs), np.nan))
    folds = min(5, len(np.unique(val_groups)), *(int(np.sum(val_targets == c)) for c in (0, 1)))
    if folds < 2:
        return *nothing, "too few validation groups or images of each label to cross-fit a stacker"

    def stacker():
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", random_state=seed))

    val_scores = np.full(len(val_inputs), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a fold short of one label's groups still fits
        for fitted_on, scored in splitter.split(val_inputs, val_targets, val_groups):
            if len(np.unique(val_targets[fitted_on])) < 2:
                return *nothing, "a cross-fitting fold of validation holds one label only"
            val_scores[scored] = stacker().fit(val_inputs[fitted_on], val_targets[fitted_on]).predict_proba(
                val_inputs[scored])[:, 1]
    other = stacker().fit(val_inputs, val_targets).predict_proba(other_inputs)[:, 1] if len(other_inputs) else \
        np.zeros(0)
    return val_scores, other, None


@register
class StackScorer(Scorer):
    name = "stack"
    column = "stack_score"
    label = "stacked"
    description = "logistic regression over the other scores, fitted on validation"
    reads = ("scores",)

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        patch = split.val.features.scores.get("patch")
        if patch is None or np.isnan(np.asarray(patch, dtype=float)).all():
            return "no patch score to stack"
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> StackScorer:
        raise NotImplementedError("the stacker is cross-fitted by on_split")

    def score_samples(self, features: Features) -> np.ndarray:
        raise NotImplementedError("the stacker is cross-fitted by on_split")

    @classmethod
    def on_split(cls, split: Split, config, seed: int) -> Scored:
        """Cross-fitted on the validation rows whose every input is known; the test rows scored by the
        stacker fitted on all of them (NaN where an input is missing, or when there is no stacker)."""
        reason = cls.unavailable(split, config)
        if reason is not None:
            return Scored.missing(split, reason)
        both = stack_inputs({name: np.concatenate([np.asarray(values, dtype=float),
                                                   np.asarray(split.test.scores[name], dtype=float)])
                             for name, values in split.val.features.scores.items() if name in INPUTS})
        val_inputs, test_inputs = both[:len(split.val.targets)], both[len(split.val.targets):]
        val_rows = np.flatnonzero(~np.isnan(val_inputs).any(axis=1))
        test_rows = np.flatnonzero(~np.isnan(test_inputs).any(axis=1))
        val, test = np.full(len(val_inputs), np.nan), np.full(len(test_inputs), np.nan)
        val[val_rows], test[test_rows], reason = stack_scores(
            val_inputs[val_rows], split.val.targets[val_rows].astype(int), split.val.groups[val_rows],
            test_inputs[test_rows], seed)
        record = {"description": cls.description} if reason is None else {"enabled": False, "reason": reason}
        return Scored(val, test, record)
