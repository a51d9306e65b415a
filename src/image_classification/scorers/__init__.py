"""Every candidate score, one module each, behind one protocol (:class:`Scorer`) and one registry.

In registration order (a scorer may read the scores of those before it): ``model`` (the trained head),
``baseline`` (logistic regression on pooled features), ``patch`` (patch memory), ``patch_gaussian`` (patch
evidence at each place), ``patch_classifier``
(supervised patch evidence), ``stack`` (logistic regression over those) and ``fold_stack`` (the
cross-validation's fits, calibrated, stacked and gated). evaluate and the cross-validation fit and
score every one of them the same way (:meth:`Scorer.on_split`); a servable one travels inside the
operating point and scores new images through :class:`ServedScore`.
"""

from image_classification.scorers.base import (
    SCORERS,
    Features,
    Labelled,
    Scored,
    Scorer,
    Split,
    columns,
    locating_names,
    probability_logit,
    register,
    scorer,
    servable_names,
)
from image_classification.scorers.head import HeadScorer
from image_classification.scorers.baseline import BaselineScorer
from image_classification.scorers.patch_memory import PatchMemoryScorer
from image_classification.scorers.patch_gaussian import PatchGaussianScorer
from image_classification.scorers.patch_classifier import PatchClassifierScorer
from image_classification.scorers.stacker import StackScorer
from image_classification.scorers.fold_stack import FoldStackScorer
from image_classification.scorers.serving import ServedScore

__all__ = ["SCORERS", "BaselineScorer", "Features", "FoldStackScorer", "HeadScorer", "Labelled", "PatchClassifierScorer",
           "PatchGaussianScorer", "PatchMemoryScorer", "Scored", "Scorer", "ServedScore", "Split", "StackScorer", "columns", "register", "scorer",
           "servable_names", "locating_names", "probability_logit"]
