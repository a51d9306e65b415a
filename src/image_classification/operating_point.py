"""The operating point evaluate chooses (``operating_point.json``), as a typed record like those in
:mod:`image_classification.artefacts`; how it is chosen lives in :mod:`image_classification.selection`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from image_classification.artefacts import Checkpoint
from image_classification.checksums import CONTENT_SHA256, json_sha256
from image_classification.errors import ArtefactError, DataError


@dataclass(frozen=True)
class OperatingPoint:
    """The decision threshold evaluate chose for one checkpoint (``operating_point.json``): a record.

    An image is called valid when its ``candidate``'s score is at least ``threshold``; the candidate is
    a servable scorer's name (:mod:`image_classification.scorers`), which rebuilds itself from
    ``served_weights`` (plain numbers; none for the model, whose weights are the checkpoint's) and
    scores images through :class:`~image_classification.scorers.ServedScore`. ``choice`` holds how
    it was chosen and what it achieved (rule, description, target, reached, fallback, the images it
    was chosen on); ``checkpoint`` what of the checkpoint it belongs to, so that predict refuses to
    apply it to another model.
    """

    CHECKPOINT_KEYS = ("weights", "input_size", "fine_tuned_blocks", "seed", "epochs_run")
    DECISION = "an image is called valid when its candidate's score is >= threshold"

    threshold: float
    choice: dict
    backbone: str | None = None
    best_epoch: int | None = None
    class_names: list[str] = field(default_factory=lambda: ["invalid", "valid"])
    checkpoint: dict = field(default_factory=dict)
    candidate: str = "model"
    served_weights: dict | None = None
    defect_map: dict | None = None

    @classmethod
    def for_checkpoint(cls, choice: dict, checkpoint: Checkpoint, candidate: str = "model",
                       served_weights: dict | None = None, defect_map: dict | None = None) -> OperatingPoint:
        """The threshold in ``choice`` (see :func:`~image_classification.metrics.select_threshold`) on
        ``candidate``'s scores (with its ``served_weights`` when it is not the model), recorded with the
        checkpoint it was chosen for. ``defect_map``: ``{"candidate": name, "weights": ...}``, a patch
        score whose map is drawn beside the served score (it decides nothing)."""
        if candidate != "model" and not served_weights:
            raise DataError(f"the operating point serves the {candidate}, but no weights of it were given")
        return cls(threshold=float(choice["threshold"]), choice={k: v for k, v in choice.items() if k != "threshold"},
                   candidate=candidate, served_weights=served_weights if candidate != "model" else None,
                   defect_map=defect_map,
                   backbone=checkpoint.backbone, best_epoch=checkpoint.best_epoch,
                   class_names=list(checkpoint.class_names),
                   checkpoint={key: getattr(checkpoint, key) for key in cls.CHECKPOINT_KEYS})

    @classmethod
    def from_payload(cls, payload: dict) -> OperatingPoint:
        """The record in ``payload``, refused when its contents disagree with the checksum it was saved with
        (edited by hand or damaged: the threshold predict would apply is not the one evaluate chose); a
        record saved before checksums existed has none to check."""
        saved = payload.get(CONTENT_SHA256)
        payload = {key: value for key, value in payload.items() if key != CONTENT_SHA256}
        if saved is not None and saved != json_sha256(payload):
            raise ArtefactError("'operating_point' holds contents that disagree with the checksum evaluate saved it "
                                "with (edited or damaged since); run `kedro run --pipelines evaluate` to choose it again")
        threshold = payload.get("threshold")
        if threshold is None or not 0.0 <= float(threshold) <= 1.0:
            raise DataError(f"operating_point has no threshold between 0 and 1 (got {threshold}); run the evaluate "
                            "pipeline")
        candidate = payload.get("candidate", "model")
        if candidate != "model" and not payload.get("served_weights"):
            raise DataError(f"operating_point serves the {candidate} but holds no served_weights; run the evaluate "
                            "pipeline again")
        known = ("threshold", "candidate", "backbone", "best_epoch", "class_names", "checkpoint", "positive_class",
                 "decision", "served_weights", "defect_map")
        return cls(threshold=float(threshold), choice={k: v for k, v in payload.items() if k not in known},
                   candidate=candidate, served_weights=payload.get("served_weights"),
                   defect_map=payload.get("defect_map") or None,
                   backbone=payload.get("backbone"), best_epoch=payload.get("best_epoch"),
                   class_names=list(payload.get("class_names") or ["invalid", "valid"]),
                   checkpoint=dict(payload.get("checkpoint") or {}))

    def to_payload(self) -> dict:
        """The record as JSON types, with ``content_sha256``: the checksum of everything else in it."""
        payload = ({"threshold": self.threshold, "candidate": self.candidate, **self.choice,
                    "positive_class": "valid", "decision": self.DECISION, "backbone": self.backbone,
                    "class_names": self.class_names, "best_epoch": self.best_epoch, "checkpoint": self.checkpoint}
                   | ({"served_weights": self.served_weights} if self.served_weights else {})
                   | ({"defect_map": self.defect_map} if self.defect_map else {}))
        return payload | {CONTENT_SHA256: json_sha256(payload)}

    def threshold_for(self, checkpoint: Checkpoint) -> float:
        """The threshold, if it was chosen for this checkpoint; a :class:`DataError` if its record of
        the checkpoint (backbone, best epoch, weights, seed, ...) disagrees: it belongs to another model."""
        recorded = {"backbone": self.backbone, "best_epoch": self.best_epoch, **self.checkpoint}
        actual = checkpoint.metadata
        differing = {key: (value, actual[key]) for key, value in recorded.items()
                     if value is not None and key in actual and actual[key] != value}
        if differing:
            raise DataError(
                f"operating_point was chosen for another checkpoint (operating point vs checkpoint: {differing}); run "
                "`kedro run --pipelines evaluate` for this checkpoint, or pass the operating point that belongs to "
                "it with --load-versions operating_point:<version>")
        return self.threshold

    def predicted_labels(self, scores: np.ndarray) -> pd.Series:
        """``valid``/``invalid`` at this threshold, the one meaning of ``predicted_label`` in every
        stage; NA where the score is NaN (an unreadable image)."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = pd.array(np.where(scores >= self.threshold, "valid", "invalid"), dtype="string")
        labels[np.isnan(scores)] = pd.NA
        return pd.Series(labels)
