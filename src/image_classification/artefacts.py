"""The structured artefacts that stages hand to each other, as small typed classes.

A catalog dataset loads and saves a plain payload (``{"tensors": ..., "metadata": ...}`` for a
safetensors file, a dict for a JSON file); these classes turn it into named fields and back, so
each metadata key is spelled in one place only:

- :class:`Checkpoint`: a trained model's weights and what is needed to rebuild it (train).
- :class:`FeatureCache`: the frozen backbone's output for every indexed image (train).
- :class:`ScoredIndex`: every indexed image scored once by a checkpoint (score); what evaluate,
  embedding_analysis and zero_shot read instead of scoring the images again.

The operating point evaluate chooses is a record of the same kind, in :mod:`image_classification.operating_point`.

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

from image_classification.checksums import tensors_sha256
from image_classification.errors import DataError
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

    @property
    def patches(self) -> torch.Tensor | None:
        """(N, grid², C) float16 patch vectors; None in a cache written with ``train.patch_grid: 0``."""
        return self.tensors.get("patches")

    @property
    def fine_patches(self) -> torch.Tensor | None:
        """(N, side², C) float16 fine patch vectors (:mod:`image_classification.fine_patches`); None
        where ``patches`` is, and in caches written before they existed."""
        return self.tensors.get("fine_patches")

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
