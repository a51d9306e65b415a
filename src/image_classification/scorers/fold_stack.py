"""``fold_stack``: global and local evidence served together, on the scale its threshold was chosen on.

On small data the cross-validation fits the baseline (a logistic regression on pooled features: global
evidence) and the patch classifier (local evidence) once per fold. Their out-of-fold scores are the
only held-out scores a threshold can be chosen on, but each fold's fit scores on its own scale, so a
threshold chosen on the pooled scores does not mean the same thing for the mean of the fits that is
served (on defects-dev it kept a small share of the recall the served score allowed: docs/decisions/0032).
The fold stack makes the two the same kind of score:

1. **calibrated per fold**: each fold's baseline, patch classifier and (with
   ``evaluate.fold_stack_patch_gaussian``, off by default) patch Gaussian logits are mapped by a Platt
   scaling (``a * logit + b``) fitted on that fold's own held-out images, so that every fold's
   scores mean the same log-odds of valid before they are pooled;
2. **stacked**: a logistic regression over the calibrated logits, fitted on all out-of-fold
   rows; its out-of-fold scores (on which the threshold is chosen) are cross-fitted, each fold's
   rows scored by a stacker fitted on the other folds' rows;
3. **averaged**: a new image is scored by every fold's calibrated fits, stacked, and the stacked
   logits are averaged: a mean of values on one scale stays on that scale;
4. **gated**: an image unlike every valid training image as a whole
   (:class:`~image_classification.global_gate.GlobalGate`: black,
   white, blank, blurred, a dead cell) scores 0, whatever its patches say. A patch model cannot see
   a defect that covers the whole image, and a linear model on pooled features may extrapolate
   anywhere from it.

Everything is plain numbers (:meth:`FoldStack.to_payload`), so the operating point serves it without
unpickling anything. docs/decisions/0032 measures it beside the other candidates.

The cross-validation builds it (:func:`fit_fold_stack`); evaluate scores with it through
:class:`FoldStackScorer`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from image_classification.errors import DataError
from image_classification.global_gate import GlobalGate
from image_classification.patch_gaussian import PatchGaussian
from image_classification.patches import PatchClassifier
from image_classification.scorers.base import Features, Scored, Scorer, Split, probability_logit, register
from image_classification.scorers.baseline import BaselineWeights

INPUTS = ("baseline", "patch_classifier", "patch_gaussian")  # a stack fitted before 0036 reads the first two
# Platt scaling is two numbers per fold and input; effectively unregularised, so that it only
# rescales (a ranking within a fold never changes)
_PLATT_C = 1e4


def input_logits(baseline: np.ndarray, patch_classifier: np.ndarray, patch_gaussian: np.ndarray | None = None
                 ) -> np.ndarray:
    """(N, 2) raw stacker inputs from the baseline's and the patch classifier's probabilities of valid,
    (N, 3) with the patch Gaussian's scores (negated distances) as the negated log of the distance."""
    columns = [probability_logit(baseline), probability_logit(patch_classifier)]
    if patch_gaussian is not None:
        columns.append(-gaussian_log_distance(-np.asarray(patch_gaussian, dtype=float)))
    return np.column_stack(columns)


def gaussian_log_distance(distance: np.ndarray | torch.Tensor):
    """log of patch Gaussian distances (floored at 1e-6): the scale its input and its map are read on."""
    if isinstance(distance, torch.Tensor):
        return distance.clamp_min(1e-6).log()
    return np.log(np.maximum(np.asarray(distance, dtype=float), 1e-6))


# ---------------------------------------------------------------- calibration and stacking


def platt(logits: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(a, b) of the logistic regression of ``targets`` on ``logits``: ``a * logit + b`` is then a
    calibrated log-odds of valid. A fold with one label only (or no spread) keeps its scale: (1, 0)."""
    logits, targets = np.asarray(logits, float), np.asarray(targets, int)
    if len(np.unique(targets)) < 2 or np.ptp(logits) == 0:
        return 1.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = LogisticRegression(C=_PLATT_C, max_iter=1000).fit(logits[:, None], targets)
    return float(fitted.coef_[0, 0]), float(fitted.intercept_[0])


@dataclass
class FoldMember:
    """One fold's fits and their calibration: ``calibration[i]`` is (a, b) for input ``INPUTS[i]``."""

    baseline: BaselineWeights
    classifier: PatchClassifier
    calibration: np.ndarray  # (inputs, 2)
    gaussian: PatchGaussian | None = None

    def raw_logits(self, pooled: np.ndarray, patches: torch.Tensor) -> np.ndarray:
        """(N, inputs) uncalibrated logits of the baseline, the patch classifier and the patch Gaussian."""
        gaussian = None if self.gaussian is None else -self.gaussian.anomaly_scores(patches)
        return input_logits(self.baseline.score(pooled), self.classifier.scores(patches), gaussian)

    def local_maps(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """(N, P) per local input (the patch classifier, then the patch Gaussian), each patch's calibrated
        defect log-odds: the negated calibration of its valid log-odds (``a * defect - b``), so an image's
        highest (the Gaussian) or top-k mean (the classifier) is the negated calibrated input."""
        maps = [self.classifier.patch_logits(patches) * float(self.calibration[1, 0]) - float(self.calibration[1, 1])]
        if self.gaussian is not None:
            distance = gaussian_log_distance(self.gaussian.distances(patches))
            maps.append(distance * float(self.calibration[2, 0]) - float(self.calibration[2, 1]))
        return maps

    def inputs(self, pooled: np.ndarray, patches: torch.Tensor) -> np.ndarray:
        """(N, inputs) calibrated logits, the stacker's inputs."""
        return self.raw_logits(pooled, patches) * self.calibration[:, 0] + self.calibration[:, 1]


@dataclass
class Stacker:
    """A standardised logistic regression over the calibrated logits, as plain numbers."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, inputs: np.ndarray, targets: np.ndarray, seed: int) -> Stacker:
        """Fitted on (N, inputs) calibrated logits. Every input is a log-odds of valid, so a negative weight
        only fits noise and would turn an input's extrapolation around (a higher probability of valid
        making an image less valid): an input that gets one is left out (weight 0) and the rest refitted."""
        scaler = StandardScaler().fit(inputs)
        standardised = scaler.transform(inputs)
        used = np.ones(inputs.shape[1], bool)
        while True:
            regression = LogisticRegression(C=1.0, class_weight="balanced", random_state=seed).fit(
                standardised[:, used], targets)
            coef = np.zeros(inputs.shape[1])
            coef[used] = regression.coef_[0]
            if (coef[used] >= 0).all() or used.sum() == 1:
                break
            used[np.flatnonzero(used)[np.argmin(coef[used])]] = False
        return cls(mean=scaler.mean_.copy(), scale=scaler.scale_.copy(), coef=coef,
                   intercept=float(regression.intercept_[0]))

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return ((inputs - self.mean) / self.scale) @ self.coef + self.intercept


@dataclass
class FoldStack:
    """The served fold stack (see the module): members, the stacker over their calibrated logits, the gate."""

    members: list[FoldMember]
    stacker: Stacker
    gate: GlobalGate | None
    grid: int

    def scores(self, pooled: np.ndarray | torch.Tensor, patches: torch.Tensor) -> np.ndarray:
        """Per image, the probability of valid: the sigmoid of the mean of the members' stacked
        logits; 0 where the global gate says the image is unlike every valid training image."""
        pooled = pooled.float().numpy() if isinstance(pooled, torch.Tensor) else np.asarray(pooled, dtype=np.float64)
        patches = torch.as_tensor(patches)
        if len(pooled) != len(patches):
            raise DataError(f"the fold stack needs pooled features and patch vectors of the same images; got "
                            f"{len(pooled)} and {len(patches)}")
        if patches.shape[1] != self.grid ** 2:
            raise DataError(f"the served fold stack reads a {self.grid}x{self.grid} patch grid, but the patch vectors "
                            f"given hold {patches.shape[1]} patches per image; run train and evaluate again with one "
                            "train.patch_grid")
        if not len(pooled):
            return np.zeros(0)
        stacked = np.mean([self.stacker.logits(member.inputs(pooled, patches)) for member in self.members], axis=0)
        scores = expit(stacked)
        if self.gate is not None:
            scores[~self.gate.passes(patches)] = 0.0
        return scores

    @property
    def inputs(self) -> tuple[str, ...]:
        return INPUTS[:len(self.stacker.coef)]

    def local_weights(self) -> np.ndarray:
        """How much each local input (patch classifier, patch Gaussian) moves the stacked logit per unit of
        its calibrated log-odds (the stacker's coefficient over its scale), as shares summing to 1; the
        patch classifier alone where the stacker gave no local input weight."""
        weights = np.maximum(self.stacker.coef[1:] / self.stacker.scale[1:], 0.0)
        if weights.sum() <= 0:
            weights = np.eye(len(weights))[0]
        return weights / weights.sum()

    def patch_map(self, patches: torch.Tensor) -> np.ndarray:
        """(N, P) the stack's local evidence per patch, in calibrated defect log-odds: per fold, its local
        inputs' maps (:meth:`FoldMember.local_maps`) weighted by :meth:`local_weights`, then averaged over
        the folds. With the patch classifier alone, an image's top_k mean for one fold is exactly the
        calibrated local input the stacker reads (negated); the global gate and the baseline are not in it."""
        patches = torch.as_tensor(patches)
        weights = self.local_weights()
        maps = [sum(float(w) * m for w, m in zip(weights, member.local_maps(patches))) for member in self.members]
        return torch.stack(maps).mean(0).numpy()

    def describe(self) -> dict:
        return {"fold_fits": len(self.members), "inputs": list(self.inputs),
                "stacker_coefficients": dict(zip(self.inputs, (float(c) for c in self.stacker.coef))),
                "map_weights": dict(zip(self.inputs[1:], (float(w) for w in self.local_weights()))),
                "calibration_per_fold": [{name: {"a": float(a), "b": float(b)}
                                          for name, (a, b) in zip(self.inputs, member.calibration)}
                                         for member in self.members],
                "global_gate": ({"cut": self.gate.cut, "valid_images": self.gate.images} if self.gate else None)}

    def to_payload(self) -> dict:
        return {"kind": "fold stack", "grid": int(self.grid), "inputs": list(self.inputs),
                "members": [{"baseline": m.baseline.to_payload(), "patch_classifier": m.classifier.to_payload(self.grid),
                             **({"patch_gaussian": m.gaussian.to_payload()} if m.gaussian is not None else {}),
                             "calibration": m.calibration.tolist()} for m in self.members],
                "stacker": {"mean": self.stacker.mean.tolist(), "scale": self.stacker.scale.tolist(),
                            "coef": self.stacker.coef.tolist(), "intercept": self.stacker.intercept},
                "global_gate": self.gate.to_payload() if self.gate else None}

    @classmethod
    def from_payload(cls, payload: dict) -> FoldStack:
        try:
            members = [FoldMember(baseline=BaselineWeights.from_payload(m["baseline"]),
                                  classifier=PatchClassifier.from_payload(m["patch_classifier"]),
                                  calibration=np.asarray(m["calibration"], dtype=float),
                                  gaussian=PatchGaussian.from_payload(m["patch_gaussian"]) if "patch_gaussian" in m
                                  else None)
                       for m in payload["members"]]
            stacker = Stacker(**{key: np.asarray(payload["stacker"][key], dtype=float)
                                 for key in ("mean", "scale", "coef")},
                              intercept=float(payload["stacker"]["intercept"]))
            grid = int(payload["grid"])
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"the served fold stack is incomplete or malformed ({error}); run the evaluate pipeline "
                            "again") from error
        inputs = len(stacker.coef)
        if not members or inputs not in (2, 3) or stacker.coef.shape != (inputs,) or \
                any(m.calibration.shape != (inputs, 2) or (m.gaussian is not None) != (inputs == 3) for m in members):
            raise DataError("the served fold stack has no members or inconsistent shapes; run the evaluate pipeline "
                            "again")
        gate = GlobalGate.from_payload(payload["global_gate"]) if payload.get("global_gate") else None
        return cls(members=members, stacker=stacker, gate=gate, grid=grid)


def fit_fold_stack(raw_logits: np.ndarray, folds: np.ndarray, targets: np.ndarray, baselines: list[BaselineWeights],
                   classifiers: list[PatchClassifier], gate_passes: np.ndarray | None, gate: GlobalGate | None,
                   grid: int, seed: int, gaussians: list[PatchGaussian] | None = None) -> tuple[FoldStack, np.ndarray]:
    """The fold stack from the cross-validation's out-of-fold raw logits ((N, 2): baseline, patch
    classifier; (N, 3) with the patch Gaussian, whose fits are then ``gaussians``), each row's ``folds``
    number (0..K-1, the index of its fold's fits in ``baselines``, ``classifiers`` and ``gaussians``),
    the rows' targets, and each row's pass of its own fold's gate.

    Returns the stack and its out-of-fold probabilities of valid: each row's calibrated inputs (its
    fold's Platt scaling) scored by a stacker fitted on the other folds' rows, 0 where its fold's
    gate refused it. A threshold chosen on these applies to :meth:`FoldStack.scores`."""
    targets = np.asarray(targets, int)
    numbers = np.unique(folds)
    if gaussians is not None and (raw_logits.shape[1] != 3 or len(gaussians) != len(baselines)):
        raise DataError(f"the fold stack's patch Gaussian input needs one fit per fold; got {len(gaussians)} fits for "
                        f"{len(baselines)} folds")
    if len(numbers) < 2 or len(numbers) != len(baselines) or len(baselines) != len(classifiers):
        raise DataError(f"the fold stack needs the fits of at least two folds, one baseline and one patch classifier "
                        f"each; got {len(numbers)} folds, {len(baselines)} baselines, {len(classifiers)} classifiers")
    calibrated = np.empty_like(raw_logits, dtype=float)
    calibrations = []
    for number in numbers:
        rows = folds == number
        calibration = np.array([platt(raw_logits[rows, i], targets[rows]) for i in range(raw_logits.shape[1])])
        calibrated[rows] = raw_logits[rows] * calibration[:, 0] + calibration[:, 1]
        calibrations.append(calibration)
    out_of_fold = np.empty(len(targets))
    for number in numbers:
        rows = folds == number
        others = ~rows
        if len(np.unique(targets[others])) < 2:
            raise DataError("a cross-validation fold's other rows hold one label only: too few images of one label to "
                            "stack the fold fits")
        out_of_fold[rows] = expit(Stacker.fit(calibrated[others], targets[others], seed).logits(calibrated[rows]))
    if gate_passes is not None:
        out_of_fold[~np.asarray(gate_passes, bool)] = 0.0
    members = [FoldMember(baseline=b, classifier=c, calibration=k, gaussian=g)
               for b, c, k, g in zip(baselines, classifiers, calibrations, gaussians or [None] * len(baselines))]
    return FoldStack(members=members, stacker=Stacker.fit(calibrated, targets, seed), gate=gate,
                     grid=int(grid)), out_of_fold


@register
class FoldStackScorer(Scorer):
    """The served fold stack; built by the cross-validation from its fold fits (so never fitted on one split)."""

    name = "fold_stack"
    column = "fold_stack_score"
    label = "fold stack (served on small data)"
    description = ("the cross-validation's baseline, patch classifier and patch Gaussian fits, each calibrated on the "
                   "images its fold did not see, stacked and averaged over the folds; 0 for an image unlike every valid "
                   "training image as a whole (global gate)")
    reads = ("pooled", "patches")
    servable = True
    cross_validated = False

    def __init__(self, stack: FoldStack) -> None:
        self.stack = stack

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        if not split.fold_fits.get(cls.name) or split.test.patches is None:
            return ("the cross-validation builds the fold stack, on small data only: cross_validation.json says "
                    "whether it ran and why not")
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> FoldStackScorer:
        return cls(FoldStack.from_payload(split.fold_fits[cls.name]))

    @classmethod
    def on_split(cls, split: Split, config, seed: int) -> Scored:
        """Test images scored by the served stack, validation images by their out-of-fold scores (the fits of
        the fold that did not see them), so both stay held out."""
        reason = cls.unavailable(split, config)
        if reason is not None:
            return Scored.missing(split, reason)
        scorer = cls.fit(split, config, seed)
        return Scored(np.asarray(split.out_of_fold[cls.name], dtype=np.float32), scorer.score_samples(split.test),
                      {"description": cls.description, **scorer.describe()}, scorer)

    def score_samples(self, features: Features) -> np.ndarray:
        return self.stack.scores(features.require("pooled", self.name), features.require("patches", self.name))

    def defect_map(self, features: Features) -> np.ndarray:
        return self.stack.patch_map(features.require("patches", self.name))

    @property
    def map_units(self) -> str:
        local = " and ".join(f"{name.replace('_', ' ')} {weight:.2f}" for name, weight in
                             zip(self.stack.inputs[1:], self.stack.local_weights()))
        return ("calibrated defect log-odds of each patch: the fold fits' local evidence on the scale the stacker reads "
                f"it, weighted as the stacker weighs it ({local}) and averaged over the folds (the baseline's global "
                "evidence and the global gate are not drawn)")

    def describe(self) -> dict:
        return self.stack.describe()

    @property
    def patch_grid(self) -> int:
        return self.stack.grid

    def to_payload(self) -> dict:
        return self.stack.to_payload()

    @classmethod
    def from_payload(cls, payload: dict) -> FoldStackScorer:
        return cls(FoldStack.from_payload(payload))
