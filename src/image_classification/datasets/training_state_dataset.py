"""A Kedro dataset that hands the training loop a place to keep its last finished epoch."""

from __future__ import annotations

import logging
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str

from image_classification.datasets.safetensors_dataset import SafetensorsDataset
from image_classification.errors import ArtefactError
from image_classification.training import ResumeStore

logger = logging.getLogger(__name__)


class SafetensorsResumeStore(ResumeStore):
    """Reads, writes (atomically) and clears one safetensors file of training state."""

    def __init__(self, dataset: SafetensorsDataset) -> None:
        self._dataset = dataset

    def read(self) -> dict | None:
        """The last finished epoch's state; None when there is none, or when the file is damaged or cut
        short: losing it costs only the epochs it held, and refusing it would stop every training run."""
        if not self._dataset.exists():
            return None
        try:
            return self._dataset.load()
        except ArtefactError as error:
            logger.warning("The saved training state cannot be used, so training starts from the first epoch: %s",
                           error)
            return None

    def write(self, state: dict) -> None:
        self._dataset.save(state)

    def clear(self) -> None:
        if self._dataset.exists():
            dataset = self._dataset
            dataset._fs.rm(get_filepath_str(dataset._get_load_path(), dataset._protocol))


class TrainingStateDataset(AbstractDataset[None, ResumeStore]):
    """Loads as a :class:`ResumeStore` bound to ``filepath``, which the train node writes each epoch.

    Like ``PartitionedDataset``'s lazy loading, the node receives a handle instead of data,
    because it must save while it runs, not only when it returns. Example catalog entry::

        training_state:
          type: image_classification.datasets.TrainingStateDataset
          filepath: data/06_models/training_state.safetensors
    """

    def __init__(self, *, filepath: str, credentials: dict | None = None, fs_args: dict | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self._filepath = filepath
        self._store = SafetensorsResumeStore(
            SafetensorsDataset(filepath=filepath, credentials=credentials, fs_args=fs_args)
        )
        self.metadata = metadata

    def load(self) -> ResumeStore:
        return self._store

    def save(self, data: None) -> None:
        raise DatasetError("TrainingStateDataset is written by the training loop, not by a node's output")

    def _exists(self) -> bool:
        return True

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
