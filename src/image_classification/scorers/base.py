"""What every candidate score is: the features it reads, the protocol it follows, and the registry.

A scorer turns what one pass of the frozen backbone gives (pooled features, patch vectors, the head's
input) and the scores of the scorers before it into one number per image, higher meaning more like
valid. Every scorer is fitted and measured the same way, by evaluate on the train / validation / test
split and by the cross-validation on each fold (:meth:`Scorer.on_split`), and a servable one is saved
as plain numbers (:meth:`Scorer.to_payload`) that the operating point carries to predict.

Adding a score is one module in this package that subclasses :class:`Scorer` and registers itself
with :func:`register`, plus its settings in ``parameters/evaluate.py``; ``tests/scorers`` runs every
registered scorer through fit, payload round trip and scoring.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from scipy.special import logit

from image_classification.errors import DataError


class LazyRows:
    """Some rows of a tensor, gathered only when a slice of them is read: ``view[start:stop]`` is those
    rows as a tensor, ``view[positions]`` a narrower view. What :meth:`Features.take` makes of the fine
    patch vectors (100 kB an image, read only by the patch Gaussian, 256 images at a time), so that a
    memory-mapped feature cache stays on disk instead of being copied into memory split by split."""

    def __init__(self, tensor: torch.Tensor | np.ndarray, rows: np.ndarray) -> None:
        self.tensor, self.rows = torch.as_tensor(tensor), np.asarray(rows, dtype=np.int64)

    @classmethod
    def of(cls, values: torch.Tensor | np.ndarray | LazyRows, rows: np.ndarray | torch.Tensor) -> LazyRows:
        """``rows`` (positions, or a mask) of ``values``: a tensor, an array (shared, not copied) or a view."""
        rows = rows.numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        if isinstance(values, LazyRows):
            return cls(values.tensor, values.rows[rows])
        return cls(values, rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.tensor.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def __getitem__(self, key: int | slice | np.ndarray | torch.Tensor) -> torch.Tensor | LazyRows:
        if isinstance(key, (int, np.integer)):
            return self.tensor[int(self.rows[key])]
        if isinstance(key, slice):
            return self.tensor[torch.from_numpy(self.rows[key])]
        return LazyRows.of(self, key)

    def __repr__(self) -> str:
        return f"LazyRows({tuple(self.shape)}, {self.dtype})"


@dataclass(frozen=True)
class Features:
    """What scorers read of some images, one row per image; a field is None where it is not at hand.

    Attributes:
        scores: earlier scorers' scores of these images by name; ``model`` is the trained model's own
            probability of valid (NaN for an unreadable image).
        head_input: the head's input of the frozen backbone, (N, C, 4, 4).
        pooled: the globally pooled backbone features, (N, C) float.
        patches: patch vectors on a grid, (N, grid², C).
        fine_patches: fine patch vectors on the stride-8 grid, (N, side², C)
            (:func:`~image_classification.fine_patches.fine_patch_features`): a tensor, or after
            :meth:`take` a :class:`LazyRows` view of it.
    """

    scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    head_input: torch.Tensor | None = None
    pooled: np.ndarray | None = None
    patches: torch.Tensor | None = None
    fine_patches: torch.Tensor | LazyRows | None = None

    def take(self, rows: np.ndarray) -> Features:
        """These features of ``rows`` only (positions); the fine patch vectors as a view, read when used."""
        rows = np.asarray(rows, dtype=np.int64)
        index = torch.from_numpy(rows)
        return Features(scores={name: np.asarray(values)[rows] for name, values in self.scores.items()},
                        head_input=None if self.head_input is None else self.head_input[index],
                        pooled=None if self.pooled is None else self.pooled[rows],
                        patches=None if self.patches is None else self.patches[index],
                        fine_patches=None if self.fine_patches is None else LazyRows.of(self.fine_patches, rows))

    def with_score(self, name: str, values: np.ndarray) -> Features:
        return replace(self, scores={**self.scores, name: np.asarray(values)})

    def require(self, what: str, scorer: str) -> object:
        """One field, or a :class:`DataError` saying that ``scorer`` needs it."""
        value = self.scores.get(what) if what == "model" else getattr(self, what)
        if value is None:
            raise DataError(f"the {scorer.replace('_', ' ')} reads {what.replace('_', ' ')}, and none were given")
        return value


@dataclass(frozen=True)
class Labelled:
    """Features of some images with their targets (1 valid, 0 invalid) and split groups."""

    features: Features
    targets: np.ndarray
    groups: np.ndarray


@dataclass(frozen=True)
class Split:
    """Images to fit scorers on (train), to choose on (validation) and to score (test), with what the
    cross-validation fitted before, for the scorers that reuse its fold fits.

    Attributes:
        fold_fits: the cross-validation's fits as payloads, by scorer name (empty where it did not run).
        out_of_fold: the validation images' out-of-fold scores by scorer name (NaN where none).
        backbone: the backbone the features come from, recorded with a served scorer.
        grid: patches per side of ``patches`` (0 without them).
        train_config: how the cross-validation trains a fold's head (the train pipeline's settings).
    """

    train: Labelled
    val: Labelled
    test: Features
    fold_fits: Mapping[str, dict] = field(default_factory=dict)
    out_of_fold: Mapping[str, np.ndarray] = field(default_factory=dict)
    backbone: str = ""
    grid: int = 0
    train_config: object | None = None

    def with_scores(self, name: str, val: np.ndarray, test: np.ndarray) -> Split:
        """This split, with ``name``'s validation and test scores among the features later scorers read."""
        return replace(self, val=replace(self.val, features=self.val.features.with_score(name, val)),
                       test=self.test.with_score(name, test))


@dataclass(frozen=True)
class Scored:
    """One scorer on one split: its validation and test scores (NaN where there are none), what was
    fitted or why nothing was (``record``), and the fitted scorer where it can be served or its map
    served beside the served score."""

    val: np.ndarray
    test: np.ndarray
    record: dict
    fitted: Scorer | None = None

    @classmethod
    def missing(cls, split: Split, reason: str) -> Scored:
        return cls(np.full(len(split.val.targets), np.nan), np.full(_rows(split.test), np.nan),
                   {"enabled": False, "reason": reason})

    @property
    def available(self) -> bool:
        return self.record.get("enabled", True) is not False


class Scorer(ABC):
    """A candidate score: fitted on a :class:`Split`, scoring :class:`Features` (higher = more like valid).

    Class attributes:
        name: key in evaluation_metrics.json, cross_validation.json and the operating point.
        column: its column in evaluation_scores and out_of_fold_scores.
        label: how figures name it.
        description: one line for the candidates table.
        reads: the :class:`Features` it reads (``scores`` for earlier scorers' scores).
        servable: predict can serve it (it saves itself as plain numbers).
        locates: its defect map can be served beside another served score, to show where a defect
            is (it saves itself as plain numbers; ``evaluate.defect_map_from``).
        cross_validated: the cross-validation fits and measures it on every fold.
        refit_for_out_of_fold: its out-of-fold scores come from a fit on the fold's train *and*
            validation images (it chooses nothing on validation, so holding validation out of its fit
            only costs it images).
    """

    name: ClassVar[str]
    column: ClassVar[str]
    label: ClassVar[str]
    description: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    servable: ClassVar[bool] = False
    locates: ClassVar[bool] = False
    cross_validated: ClassVar[bool] = True
    refit_for_out_of_fold: ClassVar[bool] = False

    @classmethod
    def unavailable(cls, split: Split, config) -> str | None:
        """Why this scorer cannot be fitted on ``split`` under ``config`` (None: it can)."""
        return None

    @classmethod
    @abstractmethod
    def fit(cls, split: Split, config, seed: int) -> Scorer:
        """Fitted on ``split.train`` (choosing any setting on ``split.val``)."""

    @abstractmethod
    def score_samples(self, features: Features) -> np.ndarray:
        """Per image, the score: higher means more like valid."""

    def describe(self) -> dict:
        """What was fitted, for evaluation_metrics.json."""
        return {"description": self.description}

    def defect_map(self, features: Features) -> np.ndarray | None:
        """(N, grid²) float32 defect evidence of every patch, row-major from the image's top-left (the
        grid covers the whole upright image), higher = more defective, in :attr:`map_units`; None for a
        score that reads no patches (see :mod:`image_classification.defect_maps`)."""
        return None

    @property
    def map_units(self) -> str:
        """What one value of :meth:`defect_map` means ("" when it draws none)."""
        return ""

    @property
    def patch_grid(self) -> int:
        """Patches per side it reads (0: it reads no patch vectors)."""
        return 0

    def to_payload(self) -> dict:
        """The fitted scorer as plain numbers (JSON: nothing to unpickle)."""
        raise DataError(f"the {self.name.replace('_', ' ')} cannot be served")

    @classmethod
    def from_payload(cls, payload: dict) -> Scorer:
        raise DataError(f"the {cls.name.replace('_', ' ')} cannot be served")

    @classmethod
    def on_split(cls, split: Split, config, seed: int) -> Scored:
        """Fitted on the split and scoring its validation and test images, or why it cannot be."""
        reason = cls.unavailable(split, config)
        if reason is not None:
            return Scored.missing(split, reason)
        scorer = cls.fit(split, config, seed)
        return Scored(scorer.score_samples(split.val.features), scorer.score_samples(split.test), scorer.describe(),
                      scorer if cls.servable or cls.locates else None)


def probability_logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), finite for probabilities rounded to 0 or 1: scores of valid as log-odds."""
    return logit(np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6))


SCORERS: dict[str, type[Scorer]] = {}


def register(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make a scorer known by its name, in the order of registration (a scorer may read
    the scores of those registered before it)."""
    if cls.name in SCORERS:
        raise ValueError(f"a scorer named '{cls.name}' is already registered")
    SCORERS[cls.name] = cls
    return cls


def scorer(name: str) -> type[Scorer]:
    """The registered scorer of this name."""
    try:
        return SCORERS[name]
    except KeyError:
        raise DataError(f"unknown score '{name}'; this version knows {', '.join(SCORERS)}") from None


def servable_names() -> tuple[str, ...]:
    return tuple(name for name, cls in SCORERS.items() if cls.servable)


def locating_names() -> tuple[str, ...]:
    """The scorers whose map can be served beside another served score (:attr:`Scorer.locates`)."""
    return tuple(name for name, cls in SCORERS.items() if cls.locates)


def columns() -> dict[str, str]:
    """Each scorer's column, by name."""
    return {name: cls.column for name, cls in SCORERS.items()}


def _rows(features: Features) -> int:
    for value in (*features.scores.values(), features.pooled, features.patches, features.head_input):
        if value is not None:
            return len(value)
    return 0
