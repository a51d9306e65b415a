"""Real processes killed with SIGKILL: training killed mid-epoch resumes to the same result as an
uninterrupted run, and a checkpoint save killed halfway leaves the previous version intact.
Two runs with the same seed and data give identical metrics.

The processes are forked from the test process (started in milliseconds, with everything already
imported); ``test_soak.py`` repeats the training case with fresh interpreters.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from kedro.io.core import Version

from image_classification.datasets import SafetensorsDataset, TrainingStateDataset

from . import train_driver

EPOCHS = 4
FORK = multiprocessing.get_context("fork")


def start_child(target, *args) -> multiprocessing.Process:
    """Fork a process that runs ``target(*args)``.

    The child runs PyTorch on one thread, as DataLoader workers do: a forked child that enters the
    parent's OpenMP thread pool hangs. Daemonic, so a stuck child never keeps pytest from exiting.
    """
    child = FORK.Process(target=_one_thread, args=(target, *args), daemon=True)
    child.start()
    return child


def _one_thread(target, *args) -> None:
    torch.set_num_threads(1)
    target(*args)


def train_in_child(workdir: Path, seconds_per_batch: float = 0.0,
                   save_every_epoch: bool = True) -> multiprocessing.Process:
    workdir.mkdir(parents=True, exist_ok=True)
    return start_child(train_driver.run, workdir, EPOCHS, seconds_per_batch, save_every_epoch)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def result_of(workdir: Path) -> dict:
    return SafetensorsDataset(filepath=str(workdir / "result.safetensors")).load()


def assert_same_result(left: dict, right: dict) -> None:
    def history(result: dict) -> pd.DataFrame:
        return pd.DataFrame(result["metadata"]["history"]).sort_index(axis=1)

    pd.testing.assert_frame_equal(history(left), history(right))
    assert left["tensors"].keys() == right["tensors"].keys()
    for name, tensor in left["tensors"].items():
        assert torch.equal(tensor, right["tensors"][name]), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """A whole training run in a process of its own (saving its state once: the numbers are the same)."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    child = train_in_child(workdir, save_every_epoch=False)
    child.join(timeout=300)
    assert child.exitcode == 0
    assert not (workdir / "training_state.safetensors").exists()  # a finished run leaves no state
    return result_of(workdir)


def test_two_runs_with_the_same_seed_and_data_give_identical_metrics(uninterrupted, tmp_path, tally):
    again = train_driver.run(tmp_path, EPOCHS, save_every_epoch=False)  # in this process this time
    assert_same_result(again, uninterrupted)
    history = pd.DataFrame(again["metadata"]["history"])
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]  # it did learn
    tally.add("repeated runs compared for determinism", 1)


def test_training_killed_mid_epoch_resumes_to_the_same_result(uninterrupted, tmp_path, tally):
    state = tmp_path / "training_state.safetensors"
    child = train_in_child(tmp_path, seconds_per_batch=0.15)  # ~0.5 s of batches per epoch
    try:
        wait_for(lambda: (train_driver.state_epoch(state) or 0) >= 2, 120, "two saved epochs")
        time.sleep(0.2)  # into the next epoch's batches
    finally:
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "result.safetensors").exists()
    saved = train_driver.state_epoch(state)
    assert 2 <= saved < EPOCHS
    TrainingStateDataset(filepath=str(state)).load().read()  # the state left behind loads whole

    child = train_in_child(tmp_path)
    child.join(timeout=300)
    assert child.exitcode == 0
    resumed = result_of(tmp_path)
    assert resumed["metadata"]["resumed_after"] == saved
    assert_same_result(resumed, uninterrupted)
    assert not state.exists()
    tally.add("processes killed mid-epoch (SIGKILL)", 1)


# ----------------------------------------------------------------------------- atomic checkpoint writes


def _slow_rename_save(filepath: str, version: str | None, value: float) -> None:
    """Save a checkpoint, stalling after its bytes are written and before they are renamed into
    place, the moment a crash would leave a half-saved file if writes were not atomic."""
    real_fsync = os.fsync

    def stalled_fsync(fd):
        real_fsync(fd)
        time.sleep(60)

    os.fsync = stalled_fsync
    SafetensorsDataset(filepath=filepath, version=Version(None, version) if version else None).save(
        checkpoint(value))


def _truncating_save(filepath: str, version: str | None, value: float) -> None:
    """Save a checkpoint whose write stops halfway through its bytes, as a crash in ``write`` would."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            self._handle.write(data[: len(data) // 2])
            self._handle.flush()
            time.sleep(60)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

    os.fdopen = lambda *args, **kwargs: HalfWriter(real_fdopen(*args, **kwargs))
    SafetensorsDataset(filepath=filepath, version=Version(None, version) if version else None).save(
        checkpoint(value))


def checkpoint(value: float) -> dict:
    return {"tensors": {"weight": torch.full((1024, 1024), value)}, "metadata": {"value": value}}


def assert_is_checkpoint(loaded: dict, value: float) -> None:
    assert loaded["metadata"] == {"value": value}
    assert torch.equal(loaded["tensors"]["weight"], checkpoint(value)["tensors"]["weight"])


def kill_during_save(save, filepath: Path, version: str | None, value: float) -> None:
    """Start ``save`` in a child process and kill it once its temporary file has bytes in it."""
    folder = filepath / version if version else filepath.parent
    name = filepath.name
    child = start_child(save, str(filepath), version, value)

    def writing() -> bool:
        return folder.exists() and any(p.stat().st_size > 0 for p in folder.glob(f".{name}.*.tmp"))

    try:
        wait_for(writing, 60, "the save to start writing")
    finally:
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL


@pytest.mark.parametrize("save", [_slow_rename_save, _truncating_save], ids=["before_rename", "mid_write"])
def test_a_checkpoint_save_killed_halfway_leaves_the_previous_version_intact(tmp_path, tally, save):
    root = tmp_path / "model.safetensors"
    SafetensorsDataset(filepath=str(root), version=Version(None, "2026-01-01T00.00.00.000Z")).save(checkpoint(1.0))

    new_version = "2026-01-02T00.00.00.000Z"
    kill_during_save(save, root, new_version, 2.0)

    assert not (root / new_version / "model.safetensors").exists()  # the half-saved one never appears
    latest = SafetensorsDataset(filepath=str(root), version=Version(None, None)).load()
    assert_is_checkpoint(latest, 1.0)
    tally.add("saves killed halfway (versioned checkpoint)", 1)


def test_a_training_state_overwrite_killed_halfway_keeps_the_previous_state(tmp_path, tally):
    path = tmp_path / "training_state.safetensors"
    SafetensorsDataset(filepath=str(path)).save(checkpoint(1.0))
    kill_during_save(_truncating_save, path, None, 2.0)
    state = SafetensorsDataset(filepath=str(path)).load()
    assert_is_checkpoint(state, 1.0)
    tally.add("saves killed halfway (training state)", 1)
