"""A read-only Kedro dataset that makes sure the built-in demo images exist, then names them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from image_classification.demo import DEMO_VERSION, ensure_demo


class DemoImagesDataset(AbstractDataset[None, str]):
    """Loads as the demo's root folder, building the demo there on first use.

    Example catalog entry::

        demo_images:
          type: image_classification.datasets.DemoImagesDataset
          path: data/01_raw/demo
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> str:
        return str(ensure_demo(self._path).resolve())

    def save(self, data: None) -> None:
        raise DatasetError("DemoImagesDataset is read-only: the demo is built from bundled images")

    def _exists(self) -> bool:
        return (self._path / ".demo_version").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "version": DEMO_VERSION}
