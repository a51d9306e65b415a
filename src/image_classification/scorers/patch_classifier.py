"""``patch_classifier``: supervised patch evidence. A small network scores every patch and an image is
as defective as its ``top_k`` most defective patches (:class:`~image_classification.patches.PatchClassifier`),
trained on the images' labels: local evidence. On small data evaluate serves the mean of the
cross-validation's fold fits (:class:`~image_classification.patches.PatchEnsemble`)."""

from __future__ import annotations

import numpy as np

from image_classification.patches import PatchClassifier, PatchEnsemble
from image_classification.scorers.base import Features, Scored, Scorer, Split, register
from image_classification.scorers.patch_memory import PatchMemoryScorer

WHAT = "a network scores every patch; an image is as defective as the mean of its top_k most defective patches"


def fit_patch_classifier(patches, targets: np.ndarray, config, seed: int) -> PatchClassifier:
    """The :class:`~image_classification.patches.PatchClassifier` of ``config``'s (evaluate's) settings."""
    return PatchClassifier.fit(patches, targets, epochs=config.patch_classifier_epochs,
                               hidden=config.patch_classifier_hidden, top_k=config.patch_classifier_top_k,
                               seed=seed, positional=config.patch_classifier_positional)


@register
class PatchClassifierScorer(Scorer):
    name = "patch_classifier"
    column = "patch_classifier_score"
    label = "patch classifier"
    description = "supervised patch evidence (a patch network trained on the labels)"
    reads = ("patches",)
    servable = True
    refit_for_out_of_fold = True  # it trains a fixed number of epochs and chooses nothing on validation

    def __init__(self, ensemble: PatchEnsemble, grid: int, record: dict | None = None) -> None:
        self.ensemble, self.grid, self.record = ensemble, int(grid), record or {}

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        reason = PatchMemoryScorer.unavailable(split, config)
        if reason is not None:
            return reason
        if not config.patch_classifier:
            return "evaluate.patch_classifier is off"
        if len(np.unique(split.train.targets)) < 2:
            return "the train split lacks readable images of one label"
        return None

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> PatchClassifierScorer:
        classifier = fit_patch_classifier(split.train.features.require("patches", cls.name),
                                          split.train.targets.astype(int), config, seed)
        return cls(PatchEnsemble([classifier]), split.grid, {
            "enabled": True, "description": f"{WHAT}; trained on the train images' labels",
            "train_images": int(len(split.train.targets)), **classifier.describe()})

    @classmethod
    def on_split(cls, split: Split, config, seed: int) -> Scored:
        """On small data, the mean of the cross-validation's fold fits: each test image scored by all of
        them, each validation image by the fold fit that did not see it (its out-of-fold score), so both
        stay held out; otherwise one fit on the train split."""
        folds = split.fold_fits.get(cls.name)
        if not folds or cls.unavailable(split, config) is not None:
            return super().on_split(split, config, seed)
        ensemble = PatchEnsemble.from_payload(folds)
        scorer = cls(ensemble, split.grid, {
            "enabled": True, "description": f"{WHAT}; the mean of the cross-validation's fold fits, each trained on "
            "the labels of its fold's other train and validation images; validation images are scored by the fit that "
            "did not see them", "fold_fits": len(ensemble.members), **ensemble.members[0].describe()})
        return Scored(np.asarray(split.out_of_fold[cls.name], dtype=np.float32), scorer.score_samples(split.test),
                      scorer.describe(), scorer)

    def score_samples(self, features: Features) -> np.ndarray:
        return self.ensemble.scores(features.require("patches", self.name))

    def defect_map(self, features: Features) -> np.ndarray:
        return self.ensemble.patch_logits(features.require("patches", self.name)).numpy()

    @property
    def map_units(self) -> str:
        return (f"defect log-odds of each patch (the patch network's logit, the mean over {len(self.ensemble.members)} "
                f"fit{'s' if len(self.ensemble.members) > 1 else ''}); an image's top-{self.ensemble.members[0].top_k} "
                "mean is its defect log-odds, minus the logit of its score"
                + (" for each fit" if len(self.ensemble.members) > 1 else ""))

    def describe(self) -> dict:
        return self.record or {"description": self.description, "fold_fits": len(self.ensemble.members)}

    @property
    def patch_grid(self) -> int:
        return self.grid

    def to_payload(self) -> dict:
        if len(self.ensemble.members) == 1 and not self.record.get("fold_fits"):
            return self.ensemble.members[0].to_payload(self.grid)
        return self.ensemble.to_payload(self.grid)

    @classmethod
    def from_payload(cls, payload: dict) -> PatchClassifierScorer:
        return cls(PatchEnsemble.from_payload(payload), int(payload["grid"]))
