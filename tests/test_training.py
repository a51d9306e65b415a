"""Tests for training.py: the loop on tiny cached features, early stopping, resume, settings."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from image_classification.runtime.scoring import head_outputs
from image_classification.model import ClassifierHead
from image_classification.training import NoResume, ResumeStore, TrainConfig, class_weight_tensor, fit

CPU = torch.device("cpu")
CHANNELS = 64  # a narrow head runs the same code as the 1280-channel one, ~100x faster


def gaussian_clusters(count: int, seed: int, channels: int = CHANNELS, shift: float = 0.3):
    """Cached-feature-shaped (N, C, 4, 4) inputs: two Gaussian clusters, alternating labels."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(count) % 2
    direction = torch.randn(channels, 4, 4, generator=torch.Generator().manual_seed(1))
    sign = (2 * targets - 1).view(-1, 1, 1, 1)
    inputs = torch.randn(count, channels, 4, 4, generator=generator) + shift * sign * direction
    return inputs, targets


class Feeds:
    """What the train node hands ``fit`` for cached features; remembers which epochs were fed."""

    def __init__(self, seed: int = 0, train_count: int = 32, val_count: int = 16, batch_size: int = 8) -> None:
        self.train_inputs, self.train_targets = gaussian_clusters(train_count, seed)
        self.val_inputs, self.val_targets = gaussian_clusters(val_count, seed + 100)
        self.batch_size = batch_size
        self.epochs_fed: list[int] = []

    def batches(self, epoch: int):
        self.epochs_fed.append(epoch)
        generator = torch.Generator().manual_seed(7919 + epoch)
        return DataLoader(TensorDataset(self.train_inputs, self.train_targets), batch_size=self.batch_size,
                          shuffle=True, generator=generator)

    def val_scores(self, head: ClassifierHead) -> np.ndarray:
        return head_outputs(head, self.val_inputs, CPU)[1]

    def fit(self, config: TrainConfig, store: ResumeStore = NoResume(), fingerprint: str = "data-v1", seed: int = 3):
        torch.manual_seed(seed)
        head = ClassifierHead(in_channels=CHANNELS, hidden_channels=16, embedding_dim=8)
        return fit(head, self.batches, self.val_scores, self.val_targets.numpy(), self.train_targets.numpy(),
                   config, CPU, seed, fingerprint, store)


class MemoryStore(ResumeStore):
    """Keeps the state in memory as a file would: tensors copied, metadata through JSON.

    ``crash_after_epoch``: the write of that epoch's state succeeds, then raises, as if the
    process died right after saving it.
    """

    def __init__(self, crash_after_epoch: int | None = None) -> None:
        self.state: dict | None = None
        self.crash_after_epoch = crash_after_epoch
        self.reads: list[int | None] = []  # the epoch each read returned
        self.writes: list[int] = []
        self.cleared = False

    def read(self) -> dict | None:
        self.reads.append(None if self.state is None else self.state["metadata"]["epoch"])
        if self.state is None:
            return None
        return {"tensors": {k: v.clone() for k, v in self.state["tensors"].items()},
                "metadata": json.loads(json.dumps(self.state["metadata"]))}

    def write(self, state: dict) -> None:
        self.state = {"tensors": {k: v.detach().clone() for k, v in state["tensors"].items()},
                      "metadata": json.loads(json.dumps(state["metadata"]))}
        epoch = state["metadata"]["epoch"]
        self.writes.append(epoch)
        if epoch == self.crash_after_epoch:
            raise RuntimeError(f"simulated crash after epoch {epoch}")

    def clear(self) -> None:
        self.state, self.cleared = None, True


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_weights(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


# ----------------------------------------------------------------------------- learning


def test_fit_learns_a_separable_set_of_cached_features():
    feeds = Feeds()
    best, history, best_epoch = feeds.fit(TrainConfig(epochs=6, batch_size=8, patience=None))
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_recall_at_precision",
                                     "val_average_precision"]
    assert history["train_loss"].iloc[-1] < 0.8 * history["train_loss"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    assert history["val_recall_at_precision"].max() == 1.0
    assert 1 <= best_epoch <= 6
    # the returned weights score the validation set as well as the history says the best epoch did
    head = ClassifierHead(in_channels=CHANNELS, hidden_channels=16, embedding_dim=8)
    head.load_state_dict(best)
    scores = feeds.val_scores(head)
    assert scores[feeds.val_targets.numpy() == 1].min() > scores[feeds.val_targets.numpy() == 0].max()


def test_fit_is_reproducible_from_the_seed():
    first = Feeds().fit(TrainConfig(epochs=2, patience=None))
    second = Feeds().fit(TrainConfig(epochs=2, patience=None))
    assert_same_weights(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


# ----------------------------------------------------------------------------- best epoch, early stopping

VAL_TARGETS = np.array([0, 0, 1, 1])
GOOD = np.array([0.1, 0.2, 0.8, 0.9])  # recall 1.0 at precision 0.9
FAIR = np.array([0.1, 0.85, 0.8, 0.9])  # recall 0.5
BAD = np.array([0.9, 0.8, 0.2, 0.1])  # target unreachable: recall counts as 0


class ScriptedValidation:
    """Validation scores read from a script, one per epoch; snapshots the weights it was shown."""

    def __init__(self, script: list[np.ndarray]) -> None:
        self.script = script
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def __call__(self, model: nn.Module) -> np.ndarray:
        self.snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.script[len(self.snapshots) - 1]


def fit_scripted(script: list[np.ndarray], epochs: int, patience: int | None):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    inputs, targets = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    validation = ScriptedValidation(script)
    best, history, best_epoch = fit(
        model, lambda epoch: [(inputs, targets)], validation, VAL_TARGETS, targets.numpy(),
        TrainConfig(epochs=epochs, patience=patience, learning_rate=0.05), CPU, 0, "scripted",
    )
    return best, history, best_epoch, validation.snapshots


def test_the_best_epochs_weights_are_returned_not_the_last():
    best, history, best_epoch, snapshots = fit_scripted([FAIR, GOOD, BAD, FAIR], epochs=4, patience=None)
    assert best_epoch == 2
    assert history["val_recall_at_precision"].tolist() == [0.5, 1.0, 0.0, 0.5]
    assert_same_weights(best, snapshots[1])
    assert not torch.equal(best["weight"], snapshots[-1]["weight"])


def test_an_equal_score_is_not_an_improvement():
    _, _, best_epoch, _ = fit_scripted([GOOD, GOOD, GOOD], epochs=3, patience=None)
    assert best_epoch == 1


def test_early_stopping_after_patience_epochs_without_improvement(caplog):
    with caplog.at_level(logging.INFO, logger="image_classification.training"):
        _, history, best_epoch, _ = fit_scripted([FAIR, GOOD, BAD, FAIR, GOOD, BAD] + [GOOD] * 4, epochs=10, patience=3)
    # epoch 2 is the best; 3, 4, 5 do not beat it (5 only equals it), so epoch 6 never runs
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5]
    assert best_epoch == 2
    assert "Early stopping" in caplog.text


def test_improvement_resets_the_patience_count():
    _, history, best_epoch, _ = fit_scripted([BAD, BAD, FAIR, BAD, GOOD, BAD, BAD], epochs=7, patience=2)
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert best_epoch == 5


def test_no_early_stopping_when_patience_is_none():
    _, history, best_epoch, _ = fit_scripted([GOOD] + [BAD] * 5, epochs=6, patience=None)
    assert len(history) == 6 and best_epoch == 1


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("schedule", ["constant", "one_cycle"])
def test_a_crashed_run_resumes_after_its_last_saved_epoch_and_ends_like_an_uninterrupted_one(caplog, schedule):
    config = TrainConfig(epochs=5, batch_size=8, patience=None, save_state_every_s=0, schedule=schedule)
    uninterrupted = Feeds().fit(config)

    store = MemoryStore(crash_after_epoch=3)
    crashed = Feeds()
    with pytest.raises(RuntimeError, match="simulated crash after epoch 3"):
        crashed.fit(config, store)
    assert store.writes == [1, 2, 3] and crashed.epochs_fed == [1, 2, 3]

    store.crash_after_epoch = None
    resumed = Feeds()
    with caplog.at_level(logging.INFO, logger="image_classification.training"):
        best, history, best_epoch = resumed.fit(config, store)
    assert store.reads == [None, 3]
    assert resumed.epochs_fed == [4, 5]
    assert "Resuming training after epoch 3 of 5" in caplog.text
    assert store.writes == [1, 2, 3, 4, 5]
    assert store.cleared and store.state is None  # a finished run leaves nothing to resume

    pd.testing.assert_frame_equal(history, uninterrupted[1])
    assert best_epoch == uninterrupted[2]
    assert_same_weights(best, uninterrupted[0])


def test_a_saved_state_with_another_fingerprint_is_ignored(caplog):
    config = TrainConfig(epochs=3, batch_size=8, patience=None, save_state_every_s=0)
    store = MemoryStore(crash_after_epoch=2)
    with pytest.raises(RuntimeError):
        Feeds().fit(config, store, fingerprint="other-data")

    store.crash_after_epoch = None
    feeds = Feeds()
    with caplog.at_level(logging.INFO, logger="image_classification.training"):
        best, history, _ = feeds.fit(config, store, fingerprint="data-v1")
    assert "Ignoring a saved training state" in caplog.text
    assert feeds.epochs_fed == [1, 2, 3]
    fresh = Feeds().fit(config)
    pd.testing.assert_frame_equal(history, fresh[1])
    assert_same_weights(best, fresh[0])


def test_state_is_written_after_the_first_epoch_then_at_most_every_save_state_every_s():
    store = MemoryStore()
    Feeds(train_count=8).fit(TrainConfig(epochs=3, patience=None, save_state_every_s=3600), store)
    assert store.writes == [1]


# ----------------------------------------------------------------------------- settings


def test_class_weight_tensor():
    weights = class_weight_tensor(np.array([0, 0, 0, 1]), "balanced")
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))
    torch.testing.assert_close(class_weight_tensor(np.array([0, 1, 1, 0]), "balanced"), torch.tensor([1.0, 1.0]))
    assert class_weight_tensor(np.array([0, 0, 0, 1]), "none") is None
    with pytest.raises(ValueError, match="both classes"):
        class_weight_tensor(np.array([1, 1, 1]), "balanced")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"target_precision": 0.0}, "target_precision"),
        ({"target_precision": 1.2}, "target_precision"),
        ({"class_weights": "inverse"}, "class_weights"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"patience": 0}, "patience"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"backbone_learning_rate": -1e-4}, "backbone_learning_rate"),
        ({"augment": "rotate"}, "train.augment must be one of none, flip, inspection, photo"),
        ({"schedule": "cosine"}, "train.schedule must be one of constant, one_cycle, got 'cosine'"),
    ],
)
def test_train_config_rejects_bad_values(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_train_config_accepts_the_edges():
    config = TrainConfig(target_precision=1.0, patience=None, class_weights="none", epochs=1)
    assert config.as_dict()["patience"] is None
    assert TrainConfig().as_dict()["epochs"] == 30


def test_train_augment_still_takes_the_old_switch():
    """Configurations written when augment was a switch for horizontal flips keep their meaning."""
    assert TrainConfig(augment=True).augment == "flip"
    assert TrainConfig(augment=False).augment == "none"
    assert TrainConfig(augment="inspection").as_dict()["augment"] == "inspection"


def test_an_auxiliary_fine_class_output_learns_the_finer_classes_it_is_given():
    """(N, 2) targets train the head's fine output too: four fine classes, two per label, which
    the valid/invalid output alone has no reason to tell apart."""
    generator = torch.Generator().manual_seed(0)
    fine = torch.arange(96) % 4  # 0, 2: invalid; 1, 3: valid
    directions = torch.randn(4, CHANNELS, 4, 4, generator=torch.Generator().manual_seed(1))
    inputs = torch.randn(96, CHANNELS, 4, 4, generator=generator) + 0.6 * directions[fine]
    targets = torch.stack([fine % 2, fine], dim=1)

    def train(weight: float) -> ClassifierHead:
        torch.manual_seed(3)
        head = ClassifierHead(in_channels=CHANNELS, hidden_channels=16, embedding_dim=8, fine_classes=4)
        batches = lambda epoch: DataLoader(TensorDataset(inputs, targets), batch_size=16, shuffle=True,  # noqa: E731
                                           generator=torch.Generator().manual_seed(epoch))
        fit(head, batches, lambda h: head_outputs(h, inputs[:32], CPU)[1], targets[:32, 0].numpy(),
            targets[:, 0].numpy(), TrainConfig(epochs=15, patience=None, fine_class_weight=weight), CPU, 3, "fine",
            NoResume())
        return head.eval()  # as the last epoch left it

    def fine_accuracy(head: ClassifierHead) -> float:
        with torch.no_grad():
            return float((head.forward_train(inputs)[1].argmax(dim=1) == fine).float().mean())

    with_fine, without = train(1.0), train(0.0)
    assert fine_accuracy(with_fine) > 0.9
    assert fine_accuracy(without) < 0.7  # untrained, it can at best tell the labels apart
    with torch.no_grad():
        assert with_fine(inputs).shape == (96, 2)  # the valid/invalid output is still the model's output
    with pytest.raises(ValueError, match="fine_class_weight"):
        TrainConfig(fine_class_weight=-1)


def test_one_cycle_warms_up_then_anneals_every_rate_and_constant_keeps_them():
    from image_classification.parameters.train import schedule_factor

    assert {schedule_factor("constant", p) for p in (0.0, 0.5, 1.0)} == {1.0}
    curve = [schedule_factor("one_cycle", step / 100) for step in range(101)]
    assert curve[0] == pytest.approx(1 / 25) and curve[15] == pytest.approx(1.0) and curve[100] == pytest.approx(0.0)
    assert all(a < b for a, b in zip(curve[:15], curve[1:16]))  # warm-up
    assert all(a > b for a, b in zip(curve[15:100], curve[16:101]))  # annealing


def test_one_cycle_moves_the_rates_of_the_steps_and_trains_other_weights_than_constant():
    """Each step runs at its scheduled rates, the backbone's and the head's alike."""
    rates: list[float] = []
    original = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    config = TrainConfig(epochs=4, batch_size=8, patience=None, save_state_every_s=0, schedule="one_cycle")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", recording_step)
        cycled = Feeds().fit(config)
    assert len(rates) == 16  # 32 images in batches of 8, 4 epochs
    peak = config.learning_rate
    assert rates[0] == pytest.approx(peak / 25) and max(rates) <= peak and rates[-1] < peak / 10
    assert rates.index(max(rates)) in (2, 3)  # the warm-up ends 15% of the way in
    constant = Feeds().fit(dataclasses.replace(config, schedule="constant"))
    assert not torch.equal(cycled[0]["layers.0.weight"], constant[0]["layers.0.weight"])


class FullDiskStore(MemoryStore):
    """A store on a full disk: every write fails as the catalog reports it (its error wrapping ENOSPC)."""

    def write(self, state: dict) -> None:
        self.writes.append(state["metadata"]["epoch"])
        try:
            raise OSError(28, "No space left on device")
        except OSError as error:
            raise RuntimeError("Failed while saving data to dataset training_state") from error


def test_a_training_state_the_disk_cannot_hold_costs_a_warning_not_the_model(caplog):
    """The resume state is several times the model's size: on a full disk training goes on without
    one (tried once, then not again), ends like a run that kept one, and leaves none to resume from."""
    config = TrainConfig(epochs=4, batch_size=8, patience=None, save_state_every_s=0)
    kept = Feeds().fit(config, MemoryStore())
    store = FullDiskStore()
    with caplog.at_level(logging.WARNING, logger="image_classification.training"):
        best, history, best_epoch = Feeds().fit(config, store)
    assert store.writes == [1] and store.cleared
    assert "The training state cannot be saved (No space left on device)" in caplog.text
    assert "start again from epoch 1" in caplog.text
    assert history["epoch"].tolist() == [1, 2, 3, 4] and best_epoch == kept[2]
    assert all(torch.equal(best[name], kept[0][name]) for name in best)
