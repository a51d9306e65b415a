"""A real training process for the interruption tests: the train node on synthetic cached features,
with its resumable state in a file (``TrainingStateDataset``), as ``kedro run --pipelines train``
would run it.

    python tests/reliability/train_driver.py WORKDIR [--epochs N] [--seconds-per-batch S]

Writes WORKDIR/result.safetensors (the best checkpoint's tensors, the history in its metadata) when
training finishes, and keeps WORKDIR/training_state.safetensors while it runs. A run killed at any
moment and started again with the same arguments resumes from the last saved epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from image_classification.datasets import SafetensorsDataset, TrainingStateDataset
from image_classification.datasets.safetensors_dataset import METADATA_KEY
from image_classification.parameters.shared import ModelConfig
from image_classification.pipelines.train.nodes import train_classifier
from image_classification.training import TrainConfig

SEED = 42
SPLITS = {"train": 24, "val": 12}  # images per split, half of each label


def synthetic_inputs() -> tuple[dict, pd.DataFrame]:
    """An image index and its cached backbone features: two separable clusters with noise."""
    rows = [(split, index % 2) for split, count in SPLITS.items() for index in range(count)]
    index = pd.DataFrame({
        "path": [f"/images/{i:03d}.png" for i in range(len(rows))],
        "split": pd.array([split for split, _ in rows], dtype="string"),
        "target": pd.array([target for _, target in rows], dtype="Int8"),
        "sha256": [f"{i:064x}" for i in range(len(rows))],
    })
    generator = torch.Generator().manual_seed(SEED)
    direction = torch.randn(1280, 4, 4, generator=generator)
    sign = torch.tensor([2 * target - 1 for _, target in rows], dtype=torch.float32).view(-1, 1, 1, 1)
    head_input = (torch.randn(len(rows), 1280, 4, 4, generator=generator) + 0.15 * sign * direction).relu()
    features = {
        "tensors": {"head_input": head_input.half(), "pooled": head_input.mean(dim=(2, 3)).half()},
        "metadata": {"backbone": "efficientnet_lite0", "weights": "none", "head_input": ModelConfig.head_input,
                     "paths": index["path"].tolist(), "sha256": index["sha256"].tolist(), "errors": [""] * len(rows)},
    }
    return features, index


class SlowFeatures:
    """Sleeps before each training batch, so an epoch lasts long enough to be killed inside."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loader = torch.utils.data.DataLoader.__iter__

    def __enter__(self) -> SlowFeatures:
        seconds, original = self.seconds, self._loader

        def slow_iter(loader):
            for batch in original(loader):
                time.sleep(seconds)
                yield batch

        torch.utils.data.DataLoader.__iter__ = slow_iter
        return self

    def __exit__(self, *exc) -> None:
        torch.utils.data.DataLoader.__iter__ = self._loader


def state_epoch(path: Path) -> int | None:
    """The last finished epoch recorded in a training-state file, read from its header only
    (the file is ~110 MB; its JSON header is at the start), or None if there is none yet."""
    try:
        with open(path, "rb") as stream:
            length = int.from_bytes(stream.read(8), "little")
            header = json.loads(stream.read(length))
    except (FileNotFoundError, ValueError):
        return None
    return json.loads(header["__metadata__"][METADATA_KEY])["epoch"]


def run(workdir: Path, epochs: int = 6, seconds_per_batch: float = 0.0, save_every_epoch: bool = True) -> dict:
    """Train to the end (resuming from any saved state) and save the result; returns it.

    ``save_every_epoch=False`` saves the state after the first epoch only (the default cadence of
    a short run): faster, and the numbers are the same.
    """
    torch.set_num_threads(1)  # the same kernels, so the same floats, in every process
    features, index = synthetic_inputs()
    config = TrainConfig(epochs=epochs, batch_size=8, patience=None, workers=0,
                         save_state_every_s=0 if save_every_epoch else 3600)
    state_file = workdir / "training_state.safetensors"
    resumed_after = state_epoch(state_file) or 0
    store = TrainingStateDataset(filepath=str(state_file)).load()
    with SlowFeatures(seconds_per_batch):
        checkpoint, history = train_classifier(features, index, ModelConfig(weights="none"), config,
                                               {"device": "cpu", "threads": 1}, SEED, store)
    result = {"tensors": checkpoint["tensors"],
              "metadata": {"history": history.to_dict("list"), "resumed_after": resumed_after}}
    SafetensorsDataset(filepath=str(workdir / "result.safetensors")).save(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seconds-per-batch", type=float, default=0.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    result = run(args.workdir, args.epochs, args.seconds_per_batch)
    print("FINISHED after resuming from epoch", result["metadata"]["resumed_after"], flush=True)


if __name__ == "__main__":
    main()
