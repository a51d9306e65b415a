"""The structured artefacts that stages hand to each other, as small typed classes.

A catalog dataset loads and saves a plain payload (``{"tensors": ..., "metadata": ...}`` for a
safetensors file, a dict for a JSON file); these classes turn it into named fields and back, so
each metadata key is spelled in one place only:

- :class:`Checkpoint`: a trained model's weights and what is needed to rebuild it (train).
- :class:`FeatureCache`: the frozen backbone's output for every indexed image (train).
- :class:`ScoredIndex`: every indexed image scored once by a checkpoint (score); what evaluate,
  embedding_analysis and zero_shot read instead of scoring the images again.

Staleness has one rule, :meth:`FeatureCache.check` and :meth:`ScoredIndex.check`: an artefact
computed for another image index or another checkpoint is refused with a :class:`DataError` that
says which pipeline to rerun, never silently recomputed or used.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from image_classification.checksums import CONTENT_SHA256, json_sha256, tensors_sha256
from image_classification.errors import ArtefactError, DataError
from image_classification.backbones import BackboneSpec, backbone_spec, build_backbone
from image_classification.model import ClassifierHead, ImageClassifier

INDEX_COLUMNS = ["path", "split", "label", "kind", "target"]


def jsonable(value: object) -> object:
    """Plain JSON types; NaN and infinity, which strict JSON lacks, become null."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _known_fields(cls: type) -> set[str]:
    return {item.name for item in dataclasses.fields(cls)} - {"tensors", "extra"}


@dataclass(frozen=True)
class Checkpoint:
    """A trained :class:`ImageClassifier`: every weight, backbone included, and how to rebuild it.

    Attributes:
        tensors: the model's state dict.
        backbone: the backbone's registry name.
        head: the :class:`ClassifierHead` arguments (channels, embedding size, classes, and
            ``fine_classes`` when it has an auxiliary fine-class output).
        fine_class_names: the classes of that output, in order (None without one).
        head_input: how the head reads the backbone's map (``pooled`` or ``corner``).
        fine_tuned_blocks: backbone blocks trained end to end; 0 means the backbone is the frozen
            pretrained one, so the train stage's feature cache describes it.
        extra: metadata keys this class does not know, kept so a round trip loses nothing.
    """

    tensors: dict[str, torch.Tensor]
    backbone: str
    head: dict
    head_input: str = "corner"  # checkpoints written before head_input existed read the corner
    weights: str = "imagenet"
    input_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    class_names: list[str] = field(default_factory=lambda: ["invalid", "valid"])
    fine_class_names: list[str] | None = None
    fine_tuned_blocks: int = 0
    best_epoch: int | None = None
    epochs_run: int | None = None
    seed: int | None = None
    train: dict | None = None
    best_val_recall_at_precision: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_payload(cls, payload: dict) -> Checkpoint:
        """The checkpoint a :class:`~image_classification.datasets.SafetensorsDataset` loaded."""
        metadata = dict(payload["metadata"])
        known = {key: metadata.pop(key) for key in _known_fields(cls) if key in metadata}
        return cls(tensors=payload["tensors"], extra=metadata, **known)

    @classmethod
    def from_model(cls, model: ImageClassifier, **fields) -> Checkpoint:
        """A checkpoint of ``model``; how its head reads the backbone's map is always recorded."""
        tensors = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        return cls(tensors=tensors, **{**fields, "head_input": model.head_input})

    @property
    def metadata(self) -> dict:
        """Every metadata field as the plain dict that is saved."""
        known = {key: getattr(self, key) for key in sorted(_known_fields(type(self)))}
        return {**self.extra, **known}

    def to_payload(self) -> dict:
        return {"tensors": self.tensors, "metadata": self.metadata}

    @property
    def spec(self) -> BackboneSpec:
        """The backbone's spec at the input size this model was trained at."""
        return backbone_spec(self.backbone).at_input_size(self.input_size)

    def model(self) -> ImageClassifier:
        """The trained model, in eval mode; no pretrained file is needed (every weight is here)."""
        model = ImageClassifier(build_backbone(self.backbone, weights="none"), ClassifierHead(**self.head),
                                head_input=self.head_input)
        model.load_state_dict(self.tensors, strict=True)
        model.freeze_backbone(0)
        return model.eval()

    def fingerprint(self) -> str:
        """sha256 of the metadata and every tensor's bytes: which model an export or a score is of."""
        return tensors_sha256(self.tensors, json.dumps(self.metadata, sort_keys=True, default=str))

    def backbone_sha256(self) -> str:
        """sha256 of the backbone's weights alone, comparable with :attr:`FeatureCache.backbone_sha256`."""
        prefix = "backbone."
        return tensors_sha256({name[len(prefix):]: tensor for name, tensor in self.tensors.items()
                               if name.startswith(prefix)})


def _index_rows_match(recorded: Sequence[str], image_index: pd.DataFrame) -> bool:
    return list(recorded) == image_index["sha256"].tolist()


@dataclass(frozen=True)
class FeatureCache:
    """The frozen backbone's output for every indexed image, in the index's order.

    Its tensors are read through :attr:`tensors` on first use: a cache loaded memory-mapped pages in,
    and checks against its checksum, only the tensors a stage reads (see
    docs/decisions/0035-artefact-checksums.md). Build one from tensors with :meth:`of`.

    Attributes:
        tensors: ``head_input``, float16 (N, C, 4, 4), what the head reads of each feature map;
            ``pooled``, float16 (N, C), the global-average-pooled feature map; and ``patches``,
            float16 (N, grid*grid, C) patch vectors for patch evidence (:mod:`image_classification.patches`),
            with ``fine_patches`` beside them (the patch Gaussian's finer vectors); both absent when
            ``train.patch_grid`` is 0 (then :attr:`patches` is None).
        errors: per image, why it could not be read, or "".
        head_input_mode: ``pooled`` (the map averaged down to the head's 4x4 grid) or ``corner``.
    """

    tensors: Mapping[str, torch.Tensor]
    backbone: str
    weights: str
    head_input_mode: str
    paths: list[str]
    sha256: list[str]
    errors: list[str]
    backbone_sha256: str | None = None  # caches written before it was recorded have none
    input_size: int | None = None  # the side images were resized to; caches written before have none

    @classmethod
    def of(cls, head_input: torch.Tensor, pooled: torch.Tensor, patches: torch.Tensor | None = None,
           fine_patches: torch.Tensor | None = None, **fields) -> FeatureCache:
        """A cache of these tensors (patches None when ``train.patch_grid`` is 0) and ``fields``."""
        tensors = {"head_input": head_input, "pooled": pooled, "patches": patches, "fine_patches": fine_patches}
        return cls(tensors={name: value for name, value in tensors.items() if value is not None}, **fields)

    @property
    def head_input(self) -> torch.Tensor:
        return self.tensors["head_input"]

    @property
    def pooled(self) -> torch.Tensor:
        return self.tensors["pooled"]

    patches = property(lambda self: self.tensors.get("patches"))
    fine_patches = property(lambda self: self.tensors.get("fine_patches"))  # None too in caches written before

    @classmethod
    def from_payload(cls, payload: dict) -> FeatureCache:
        metadata = payload["metadata"]
        return cls(
            tensors=payload["tensors"],
            backbone=metadata["backbone"], weights=metadata.get("weights", "imagenet"),
            # caches written before head_input was recorded hold the corner input
            head_input_mode=metadata.get("head_input", "corner"),
            paths=list(metadata["paths"]), sha256=list(metadata["sha256"]), errors=list(metadata["errors"]),
            backbone_sha256=metadata.get("backbone_sha256"), input_size=metadata.get("input_size"),
        )

    def to_payload(self) -> dict:
        return {
            "tensors": dict(self.tensors),
            "metadata": {"backbone": self.backbone, "weights": self.weights, "head_input": self.head_input_mode,
                         "paths": self.paths, "sha256": self.sha256, "errors": self.errors,
                         "backbone_sha256": self.backbone_sha256, "input_size": self.input_size},
        }

    @property
    def readable(self) -> np.ndarray:
        """Per image, whether the backbone could read it."""
        return np.array([not error for error in self.errors], dtype=bool)

    def check_index(self, image_index: pd.DataFrame) -> FeatureCache:
        """This cache, if it was computed for these images (in order), whatever its backbone: for
        readers that take the backbone the cache was made with; else a :class:`DataError`."""
        return self.check(image_index, self.backbone, self.head_input_mode)

    def check(self, image_index: pd.DataFrame, backbone: str, head_input_mode: str,
              backbone_sha256: str | None = None, input_size: int | None = None) -> FeatureCache:
        """This cache, if it was computed for these images (in order), this backbone (these very
        weights and input size, when both sides record them) and this head input; else a
        :class:`DataError`."""
        same_weights = None in (backbone_sha256, self.backbone_sha256) or backbone_sha256 == self.backbone_sha256
        same_size = None in (input_size, self.input_size) or input_size == self.input_size
        if not (_index_rows_match(self.sha256, image_index) and self.backbone == backbone
                and self.head_input_mode == head_input_mode and same_weights and same_size):
            raise DataError(
                f"backbone_features were computed for another image index or backbone ({self.backbone}, "
                f"head_input {self.head_input_mode}, {len(self.sha256)} images; now {backbone}, head_input "
                f"{head_input_mode}, {len(image_index)} images{'' if same_weights else ', other weights'}"
                f"{'' if same_size else f', input size {input_size} px, not {self.input_size}'}); "
                "run `kedro run --pipelines train` to recompute them")
        return self


@dataclass(frozen=True)
class ScoredIndex:
    """Every indexed image scored once by one checkpoint, in the index's order.

    Attributes:
        score: float32 (N,), the probability of valid; NaN where the image could not be read.
        embedding: float32 (N, 50), the head's embedding (pre-logits).
        pooled: float16 (N, C), the scoring backbone's global-average-pooled features.
        errors: per image, why it could not be read, or "".
        checkpoint: the :meth:`Checkpoint.fingerprint` of the model that scored them.
        source: ``feature_cache`` or ``images`` (a fine-tuned backbone reads the files again).
    """

    score: np.ndarray
    embedding: np.ndarray
    pooled: torch.Tensor
    sha256: list[str]
    errors: list[str]
    checkpoint: str
    source: str

    @classmethod
    def from_payload(cls, payload: dict) -> ScoredIndex:
        tensors, metadata = payload["tensors"], payload["metadata"]
        return cls(score=tensors["score"].numpy(), embedding=tensors["embedding"].numpy(), pooled=tensors["pooled"],
                   sha256=list(metadata["sha256"]), errors=list(metadata["errors"]),
                   checkpoint=metadata["checkpoint"], source=metadata["source"])

    def to_payload(self) -> dict:
        return {
            "tensors": {"score": torch.as_tensor(np.ascontiguousarray(self.score, np.float32)),
                        "embedding": torch.as_tensor(np.ascontiguousarray(self.embedding, np.float32)),
                        "pooled": self.pooled.to(torch.float16).contiguous()},
            "metadata": {"sha256": self.sha256, "errors": self.errors, "checkpoint": self.checkpoint,
                         "source": self.source},
        }

    def check(self, image_index: pd.DataFrame, checkpoint: Checkpoint) -> ScoredIndex:
        """These scores, if they were computed for these images (in order) by this checkpoint."""
        if not _index_rows_match(self.sha256, image_index):
            raise DataError("scored_index was computed for another image index (data_prep ran since); run "
                            "`kedro run --pipelines train,score` (or `--pipelines score` if the model is current)")
        if self.checkpoint != checkpoint.fingerprint():
            raise DataError("scored_index was computed by another model_checkpoint than the one loaded; run "
                            "`kedro run --pipelines score` to score the images with this checkpoint")
        return self

    def table(self, image_index: pd.DataFrame) -> pd.DataFrame:
        """One row per indexed image: path, split, label, kind, target, score, error, ``e0..e{d-1}``."""
        table = image_index[INDEX_COLUMNS].reset_index(drop=True).copy()
        table["score"] = self.score.astype(np.float32)
        table["error"] = pd.array(self.errors, dtype="string")
        columns = {f"e{i}": self.embedding[:, i] for i in range(self.embedding.shape[1])}
        return pd.concat([table, pd.DataFrame(columns)], axis=1)

    def space(self, name: str) -> np.ndarray:
        """The features of one anomaly-detection space, (N, d) float64: ``embedding``, ``pooled`` or
        ``score`` (the classifier's probability of valid, as one column), or several side by side
        (``embedding+pooled``)."""
        if "+" in name:
            return np.hstack([self.space(part) for part in name.split("+")])
        if name == "embedding":
            return self.embedding.astype(np.float64)
        if name == "pooled":
            return self.pooled.double().numpy()
        if name == "score":
            return self.score.astype(np.float64)[:, None]
        raise ValueError(f"unknown feature space '{name}'")


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
