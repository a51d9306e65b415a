"""A read-only Kedro dataset for the built-in demo images, built on first use and only when used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from image_classification.demo import DEMO_VERSION, DemoFolder


class DemoImagesDataset(AbstractDataset[None, DemoFolder]):
    """Loads as a ``DemoFolder``: called, it returns the demo's root folder, building the demo
    there on its first call; a source whose paths lie inside that folder (the cifar10_dev
    environment reads the demo's far unseen kinds) builds it too. Loading builds nothing: a run on
    the user's own images never writes the demo.

    Example catalog entry::

        demo_images:
          type: image_classification.datasets.DemoImagesDataset
          path: data/01_raw/demo
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> DemoFolder:
        return DemoFolder(self._path)

    def save(self, data: None) -> None:
        raise DatasetError("DemoImagesDataset is read-only: the demo is built from bundled images")

    def _exists(self) -> bool:
        return (self._path / ".demo_version").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "version": DEMO_VERSION}
