"""``model``: the trained model's probability of valid, the original design's head.

evaluate reads it from the score stage's pass (the checkpoint train made); the cross-validation trains
the head afresh on each fold's cached head inputs, as train does with a frozen backbone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from image_classification.model import ClassifierHead
from image_classification.runtime.scoring import head_outputs
from image_classification.scorers.base import Features, Scored, Scorer, Split, register
from image_classification.training import cached_feeds, fit


def fit_head(head_input: torch.Tensor, rows: dict[str, np.ndarray], targets: np.ndarray, train_config,
             seed: int) -> tuple[torch.nn.Module, pd.DataFrame, int]:
    """The original head trained on ``rows['train']`` with early stopping on ``rows['val']`` (as the
    train pipeline does with a frozen backbone), its best epoch's weights loaded; with its training
    history and best epoch."""
    device = torch.device("cpu")
    split_targets = {split: targets[index] for split, index in rows.items()}
    torch.manual_seed(seed)  # the head's initial weights: the same fold trains the same head every time
    head = ClassifierHead(in_channels=head_input.shape[1])
    batches, val_scores = cached_feeds(head_input, rows, split_targets, train_config, seed, device)
    best, history, best_epoch = fit(head, batches, val_scores, split_targets["val"], split_targets["train"],
                                    train_config, device, seed, fingerprint=f"cross-validation {seed}",
                                    name="Cross-validation head")
    head.load_state_dict(best)
    return head, history, best_epoch


@register
class HeadScorer(Scorer):
    """The trained model's probability of valid: the checkpoint's own scores, or a fold's head."""

    name = "model"
    column = "score"
    label = "model"
    description = "the trained model (the original head)"
    reads = ("head_input",)
    servable = True

    def __init__(self, head: torch.nn.Module | None = None) -> None:
        self.head = head  # None: the checkpoint's model, whose scores come with the features

    @classmethod
    def fit(cls, split: Split, config, seed: int) -> HeadScorer:
        """A head trained on the split's cached head inputs, early-stopped on validation (``split.train_config``)."""
        inputs = torch.cat([split.train.features.require("head_input", cls.name),
                            split.val.features.head_input])
        rows = {"train": np.arange(len(split.train.targets)),
                "val": np.arange(len(split.train.targets), len(inputs))}
        targets = np.concatenate([split.train.targets, split.val.targets])
        head, _, _ = fit_head(inputs, rows, targets, split.train_config, seed)
        return cls(head)

    def score_samples(self, features: Features) -> np.ndarray:
        if self.head is None:
            return np.asarray(features.require("model", self.name), dtype=np.float64)
        return head_outputs(self.head, features.require("head_input", self.name), torch.device("cpu"))[1]

    def describe(self) -> dict:
        return {}

    def to_payload(self) -> dict:
        return {}  # the checkpoint is the model: nothing else to carry

    @classmethod
    def from_payload(cls, payload: dict) -> HeadScorer:
        return cls()

    @classmethod
    def on_split(cls, split: Split, config, seed: int) -> Scored:
        """In evaluate, the checkpoint's scores as they come; in a cross-validation fold, a head trained on it."""
        if "model" in split.val.features.scores:
            return Scored(np.asarray(split.val.features.scores["model"]), np.asarray(split.test.scores["model"]), {},
                          cls())
        return super().on_split(split, config, seed)
