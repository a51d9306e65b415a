"""Parameters of the evaluate pipeline (``conf/base/parameters_evaluate.yml``)."""

from __future__ import annotations

from dataclasses import dataclass

from image_classification.errors import ParameterError
from image_classification.metrics import BOUND_METHODS, RuleSettings, check_target_precision, threshold_rule
from image_classification.scorers import locating_names, servable_names


OPERATING_CANDIDATES = servable_names()
MAP_SOURCES = ("served", *locating_names())


@dataclass(frozen=True)
class EvaluateConfig:
    """How the operating point is chosen and measured; Kedro checks it before any node runs.

    Attributes:
        target_precision: the precision the operating point must reach, in (0, 1].
        rule: a name in :data:`~image_classification.metrics.THRESHOLD_RULES`. ``point``: the
            highest validation recall whose validation precision reaches the target;
            ``lower_bound``: the highest validation recall whose one-sided lower confidence bound
            on validation precision reaches it (honest on small validation sets; the default, see
            docs/decisions/0015).
        bound_method: ``wilson`` or ``clopper_pearson`` (exact, more conservative).
        bound_level: confidence of the one-sided bound on validation, in (0, 1).
        out_of_fold_bound_level: confidence of the bound where the threshold is chosen on out-of-fold
            scores (five times as many images as validation), in (0, 1); 0.8 kept the most of the
            recall the fold stack's scores allowed at the same held precision (docs/decisions/0032).
        bootstrap_samples: resamples of the test split behind the confidence intervals.
        bootstrap_level: coverage of the bootstrap intervals, in (0, 1).
        baseline_c_grid: inverse regularisation strengths tried for the baseline.
        gallery_size: false positives, and false negatives, shown in the error gallery; invalid test
            images shown in the defect map gallery.
        patch_evidence: score validation and test images by patch evidence (and stack it with the
            model and the baseline) when the feature cache holds patches (``train.patch_grid`` > 0).
        patch_coreset_fraction: share of the valid training images' patches the memory keeps.
        patch_memory_max: the most patches the memory keeps.
        patch_top_k: an image's patch score is the mean distance of its ``patch_top_k`` most unusual patches.
        patch_gaussian: also score images by patch evidence at each place (the distance of each patch from
            the valid training images' mean patch at its grid position, one shared covariance; see
            :class:`~image_classification.patch_gaussian.PatchGaussian`), a candidate of its own, measured
            and not served; it points at small local defects better than any other score
            (docs/decisions/0036). Needs ``patch_evidence`` and patches in the cache.
        fold_stack_patch_gaussian: also stack the patch Gaussian's fold fits in the fold stack, whose
            map then mixes its map with the patch classifier's: on defects-dev the served map pointed at
            small pasted defects a little more often and the stack ranked real defects a little worse,
            so it is off (docs/decisions/0036). Needs ``patch_gaussian``.
        defect_map_from: which score draws the defect maps of predict, the galleries and the MLflow
            model: ``served``, the served score's own (its top patches reproduce its score; a score that
            reads no patches is explained by the patch classifier's), or ``patch_gaussian``, the patch
            Gaussian's, served beside the served score and labelled as such (it decides nothing): on
            small pasted defects it points at the defect far more often (docs/decisions/0037). Falls
            back to ``served`` where the patch Gaussian was not fitted.
        patch_classifier: also score images by supervised patch evidence (a small network over the
            cached patch vectors trained on the train images' labels, an image scored by its
            ``patch_classifier_top_k`` most defective patches; see
            :class:`~image_classification.patches.PatchClassifier`), a candidate of its own and an
            input of the stacker. Needs ``patch_evidence`` and patches in the cache.
        patch_classifier_epochs: passes over the train images.
        patch_classifier_hidden: hidden units of the per-patch network.
        patch_classifier_top_k: patches averaged into an image's score.
        patch_classifier_positional: read each patch against the training images' mean patch at its own
            grid position (for aligned photos: a part under a fixed camera), not one mean for all.
        cv_folds: grouped folds of the cross-validation report (0: off).
        cv_max_images: cross-validate only when fewer labelled images than this are readable.
        operating_candidate: the score whose threshold is the operating point that predict, zero_shot
            and embedding_analysis apply: ``model``, ``baseline``, ``patch_classifier`` or
            ``fold_stack`` (these three servable only with a frozen backbone, the last only where the
            cross-validation ran: :mod:`~image_classification.scorers.fold_stack`), or ``auto``: on small data
            the fold stack, its threshold chosen on its own out-of-fold scores; on large data the
            model, unless the baseline's or the patch classifier's validation average precision is
            clearly higher (a paired bootstrap interval of the difference above 0; of two, the higher).
        threshold_on: where the threshold is chosen: ``validation``, ``out_of_fold`` (the
            cross-validation's held-out scores of train and validation images, five times as many;
            falls back to validation when cross-validation did not run), or ``auto``: out of fold for
            the baseline and the patch classifier, validation for the model (early-stopped heads of
            different folds do not score on one scale, so a threshold does not carry from theirs to
            the served one).
    """

    target_precision: float = 0.9
    rule: str = "lower_bound"
    bound_method: str = "wilson"
    bound_level: float = 0.95
    out_of_fold_bound_level: float = 0.8
    bootstrap_samples: int = 1000
    bootstrap_level: float = 0.95
    baseline_c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
    gallery_size: int = 8
    patch_evidence: bool = True
    patch_coreset_fraction: float = 0.1
    patch_memory_max: int = 10000
    patch_top_k: int = 1
    patch_gaussian: bool = True
    fold_stack_patch_gaussian: bool = False
    defect_map_from: str = "patch_gaussian"
    patch_classifier: bool = True
    patch_classifier_epochs: int = 30
    patch_classifier_hidden: int = 64
    patch_classifier_top_k: int = 10
    patch_classifier_positional: bool = False
    cv_folds: int = 5
    cv_max_images: int = 2000
    operating_candidate: str = "auto"
    threshold_on: str = "auto"

    def __post_init__(self) -> None:
        check_target_precision(self.target_precision)
        threshold_rule(self.rule)
        if self.bound_method not in BOUND_METHODS:
            raise ParameterError(f"evaluate.bound_method must be one of {', '.join(BOUND_METHODS)}, got '{self.bound_method}'")
        for name in ("bound_level", "out_of_fold_bound_level", "bootstrap_level"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ParameterError(f"evaluate.{name} must be in (0, 1), got {getattr(self, name)}")
        if int(self.bootstrap_samples) < 1 or int(self.gallery_size) < 0:
            raise ParameterError("evaluate.bootstrap_samples must be at least 1 and evaluate.gallery_size at least 0")
        if not 0.0 < float(self.patch_coreset_fraction) <= 1.0 or int(self.patch_memory_max) < 1 or int(self.patch_top_k) < 1:
            raise ParameterError(f"evaluate.patch_coreset_fraction must be in (0, 1] and patch_memory_max and "
                                 f"patch_top_k at least 1, got {self.patch_coreset_fraction}, {self.patch_memory_max} "
                                 f"and {self.patch_top_k}")
        if min(int(self.patch_classifier_epochs), int(self.patch_classifier_hidden),
               int(self.patch_classifier_top_k)) < 1:
            raise ParameterError(f"evaluate.patch_classifier_epochs, patch_classifier_hidden and "
                                 f"patch_classifier_top_k must be at least 1, got {self.patch_classifier_epochs}, "
                                 f"{self.patch_classifier_hidden} and {self.patch_classifier_top_k}")
        if int(self.cv_folds) not in (0, *range(2, 21)) or int(self.cv_max_images) < 0:
            raise ParameterError(f"evaluate.cv_folds must be 0 (off) or 2 to 20, and cv_max_images at least 0; got "
                                 f"{self.cv_folds} and {self.cv_max_images}")
        if self.operating_candidate not in ("auto", *OPERATING_CANDIDATES):
            raise ParameterError(f"evaluate.operating_candidate must be auto, {' or '.join(OPERATING_CANDIDATES)}, got "
                                 f"'{self.operating_candidate}' (patch and stack are measured, not served; fold_stack "
                                 "needs the cross-validation)")
        if self.defect_map_from not in MAP_SOURCES:
            raise ParameterError(f"evaluate.defect_map_from must be {' or '.join(MAP_SOURCES)}, got "
                                 f"'{self.defect_map_from}'")
        if self.threshold_on not in ("auto", "validation", "out_of_fold"):
            raise ParameterError(f"evaluate.threshold_on must be auto, validation or out_of_fold, got "
                                 f"'{self.threshold_on}'")
        grid = tuple(float(c) for c in self.baseline_c_grid)
        if not grid or min(grid) <= 0:
            raise ParameterError(f"evaluate.baseline_c_grid must list positive values, got {list(self.baseline_c_grid)}")
        object.__setattr__(self, "baseline_c_grid", grid)  # YAML gives a list

    @property
    def rule_settings(self) -> RuleSettings:
        return RuleSettings(self.target_precision, self.bound_level, self.bound_method)
