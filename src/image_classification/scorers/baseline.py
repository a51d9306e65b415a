"""``baseline``: a logistic regression on the frozen backbone's pooled features, measured beside the
model (if the deep head cannot beat it, the head does not earn its keep) and servable with a frozen
backbone: global evidence."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from image_classification.errors import DataError
from image_classification.metrics import validation_score
from image_classification.scorers.base import Features, Scorer, Split, register


class LogisticBaseline:
    """Standardised features, balanced class weights, C chosen on validation.

    ``fit`` tries every C of ``c_grid`` on the training images and keeps the one with the best
    validation score, scored as training's early stopping scores (recall at the target precision,
    then average precision); ties go to the stronger regularisation.

    Attributes set by ``fit``: ``c_`` (the chosen C), ``quality_`` (C -> validation recall at the
    target precision and average precision) and ``model_`` (the fitted scikit-learn pipeline).
    """

    def __init__(self, c_grid: tuple[float, ...], target_precision: float, seed: int) -> None:
        self.c_grid = tuple(c_grid)
        self.target_precision = target_precision
        self.seed = seed

    def _fit_one(self, features: np.ndarray, targets: np.ndarray, c: float) -> Pipeline:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000,
                                                                   random_state=self.seed))
        with warnings.catch_warnings():
            # separable features drive weights up at large C; the validation score judges the fit
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(features, targets.astype(int))

    def fit(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> LogisticBaseline:
        fitted = {c: self._fit_one(train_x, train_y, c) for c in self.c_grid}
        self.quality_ = {c: validation_score(val_y, model.predict_proba(val_x)[:, 1], self.target_precision)
                         for c, model in fitted.items()}
        self.c_ = max(self.quality_, key=lambda c: (self.quality_[c], -c))
        self.model_ = fitted[self.c_]
        return self

    def score_samples(self, features: np.ndarray) -> np.ndarray:
        """The probability of valid per image."""
        return self.model_.predict_proba(features)[:, 1]

    def summary(self, backbone: str, train_images: int) -> dict:
        """What was fitted, for evaluation_metrics.json: C and the validation score of every C tried."""
        return {
            "description": f"logistic regression (standardised features, balanced class weights) on the frozen "
                           f"{backbone} backbone's pooled features of the train split",
            "C": self.c_, "train_images": int(train_images),
            "c_grid": [{"C": c, "val_recall_at_target_precision": recall, "val_average_precision": average_precision}
                       for c, (recall, average_precision) in self.quality_.items()],
        }


@dataclass(frozen=True)
class BaselineWeights:
    """A fitted :class:`LogisticBaseline` as plain numbers (``scorer_models.json``, and inside
    ``operating_point.json`` when it is served), so that predict, zero_shot, embedding_analysis and
    the MLflow model serve it without unpickling anything.

    The probability of valid is ``expit(((x - mean) / scale) @ coef + intercept)`` for pooled features
    ``x`` of the frozen ``backbone`` (the feature cache's, which a checkpoint without fine-tuned
    blocks computes too).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    c: float
    backbone: str

    @classmethod
    def of(cls, baseline: LogisticBaseline, backbone: str) -> BaselineWeights:
        scaler, regression = baseline.model_[0], baseline.model_[-1]
        return cls(mean=np.asarray(scaler.mean_, float), scale=np.asarray(scaler.scale_, float),
                   coef=np.asarray(regression.coef_[0], float), intercept=float(regression.intercept_[0]),
                   c=float(baseline.c_), backbone=backbone)

    def to_payload(self) -> dict:
        return {"kind": "logistic regression on pooled backbone features", "backbone": self.backbone, "C": self.c,
                "features": int(len(self.coef)), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def from_payload(cls, payload: dict | None) -> BaselineWeights:
        if not payload or not payload.get("coef"):
            raise DataError("no fitted baseline weights were given (the operating point serves the baseline); run "
                            "`kedro run --pipelines evaluate`")
        weights = cls(mean=np.asarray(payload["mean"], float), scale=np.asarray(payload["scale"], float),
                      coef=np.asarray(payload["coef"], float), intercept=float(payload["intercept"]),
                      c=float(payload["C"]), backbone=str(payload["backbone"]))
        if not len(weights.mean) == len(weights.scale) == len(weights.coef):
            raise DataError(f"the baseline weights are inconsistent: {len(weights.mean)} means, {len(weights.scale)} scales "
                            f"and {len(weights.coef)} weights; run `kedro run --pipelines evaluate` again")
        return weights

    def score(self, pooled: np.ndarray) -> np.ndarray:
        """The probability of valid per row of pooled features (NaN rows stay NaN)."""
        pooled = np.asarray(pooled, dtype=np.float64)
        if pooled.ndim != 2 or pooled.shape[1] != len(self.coef):
            raise DataError(f"the baseline was fitted on {len(self.coef)} pooled {self.backbone} features, got "
                            f"features of shape {pooled.shape}; run `kedro run --pipelines evaluate` for this model")
        return expit(((pooled - self.mean) / self.scale) @ self.coef + self.intercept)


@register
class BaselineScorer(Scorer):
    """The logistic regression on pooled features: fitted (C chosen on validation) or served from its weights."""

    name = "baseline"
    column = "baseline_score"
    label = "baseline (logistic regression)"
    description = "logistic regression on pooled features"
    reads = ("pooled",)
    servable = True

    def __init__(self, weights: BaselineWeights, fitted: LogisticBaseline | None = None, train_images: int = 0) -> None:
        self.weights, self.fitted, self.train_images = weights, fitted, train_images

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> BaselineScorer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted = LogisticBaseline(config.baseline_c_grid, config.target_precision, seed).fit(
                split.train.features.require("pooled", cls.name), split.train.targets, split.val.features.pooled,
                split.val.targets)
        return cls(BaselineWeights.of(fitted, split.backbone), fitted, len(split.train.targets))

    def score_samples(self, features: Features) -> np.ndarray:
        pooled = features.require("pooled", self.name)
        if self.fitted is not None:  # as fitted (scikit-learn), to the last digit
            return self.fitted.score_samples(pooled)
        return self.weights.score(pooled)

    def describe(self) -> dict:
        if self.fitted is None:
            return {"description": self.description, "C": self.weights.c}
        return self.fitted.summary(self.weights.backbone, self.train_images)

    def to_payload(self) -> dict:
        return self.weights.to_payload()

    @classmethod
    def from_payload(cls, payload: dict) -> BaselineScorer:
        return cls(BaselineWeights.from_payload(payload))
