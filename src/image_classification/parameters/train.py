"""Parameters of the train pipeline (``conf/base/parameters_train.yml``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from image_classification.errors import ParameterError
from image_classification.metrics import check_target_precision
from image_classification.model import augmentation

SCHEDULES = ("constant", "one_cycle")
"""How the learning rates move over a run (``train.schedule``): ``constant``, the original project's;
``one_cycle``, each rate warmed up from 1/25 of itself over the first 15% of the planned steps, then
annealed to zero along a cosine, for fine-tuning a whole backbone without wrecking its features in the
first steps."""


def schedule_factor(schedule: str, progress: float) -> float:
    """The multiple of each configured learning rate at ``progress`` (0 to 1) through the planned steps."""
    if schedule == "constant":
        return 1.0
    progress, warmup, start = min(max(progress, 0.0), 1.0), 0.15, 1 / 25
    if progress < warmup:
        return start + (1 - start) * progress / warmup
    return 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the original project's."""

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1.5e-3
    weight_decay: float = 1e-5
    trainable_blocks: int = 0
    backbone_learning_rate: float = 1.5e-4
    class_weights: str = "balanced"
    patience: int | None = 5
    target_precision: float = 0.9
    augment: str = "none"
    workers: int = 0
    save_state_every_s: float = 60.0
    patch_grid: int = 14
    fine_class_weight: float = 0.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        check_target_precision(self.target_precision)
        if isinstance(self.augment, bool):  # the setting was a switch for horizontal flips before
            object.__setattr__(self, "augment", "flip" if self.augment else "none")
        augmentation(self.augment)  # refuses an unknown setting, naming the choices
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.class_weights not in ("balanced", "none"):
            raise ParameterError(f"train.class_weights must be 'balanced' or 'none', got '{self.class_weights}'")
        if self.patience is not None and int(self.patience) < 1:
            raise ParameterError(f"train.patience must be at least 1 or null (off), got {self.patience}")
        if int(self.patch_grid) < 0:
            raise ParameterError(f"train.patch_grid must be 0 (no patch vectors) or the patches per side, got "
                                 f"{self.patch_grid}")
        if self.fine_class_weight < 0:
            raise ParameterError(f"train.fine_class_weight must be 0 (off) or positive, got {self.fine_class_weight}")
        if self.schedule not in SCHEDULES:
            raise ParameterError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.learning_rate <= 0 or self.backbone_learning_rate <= 0:
            raise ParameterError("train.learning_rate and train.backbone_learning_rate must be positive")

    def as_dict(self) -> dict:
        return asdict(self)
