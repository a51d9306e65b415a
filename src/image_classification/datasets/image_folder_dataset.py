"""A Kedro dataset of many images, one PNG each, kept together as one versioned folder."""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from functools import partial
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io import AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str, get_protocol_and_path
from PIL import Image

SUFFIX = ".png"


class ImageFolderDataset(AbstractVersionedDataset[dict, dict]):
    """Saves ``{name: PIL image, or a function that returns one}`` as ``<name>.png`` files in one folder;
    loads ``{name: function that opens it}``. Functions are called one at a time as each file is
    written, so a run of thousands never holds more than one image (as ``PartitionedDataset``'s lazy
    saving does), and, unlike a ``PartitionedDataset``, the folder is versioned like every other output:
    one run's images never mix with another's. Example catalog entry::

        prediction_overlays:
          type: image_classification.datasets.ImageFolderDataset
          filepath: data/08_reporting/prediction_overlays
          versioned: true
    """

    def __init__(self, *, filepath: str, version: Version | None = None, credentials: dict | None = None,
                 fs_args: dict | None = None, metadata: dict[str, Any] | None = None) -> None:
        protocol, path = get_protocol_and_path(filepath, version)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **fs_args)
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists,
                         glob_function=self._fs.glob)

    def save(self, data: dict[str, Image.Image | Callable[[], Image.Image]]) -> None:
        """Writes the images into this version's folder (empty when a run draws none)."""
        folder = get_filepath_str(self._get_save_path(), self._protocol)
        self._fs.makedirs(folder, exist_ok=True)
        for name, image in data.items():
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                raise DatasetError(f"'{name}' cannot name an image file: a name holds no folder separator")
            image = image() if callable(image) else image
            with self._fs.open(f"{folder}/{name}{SUFFIX}", "wb") as file:
                image.save(file, format="PNG")
        self._fs.invalidate_cache(folder)

    def load(self) -> dict[str, Callable[[], Image.Image]]:
        folder = get_filepath_str(self._get_load_path(), self._protocol)
        names = sorted(path.rsplit("/", 1)[-1] for path in self._fs.glob(f"{folder}/*{SUFFIX}"))
        return {name[:-len(SUFFIX)]: partial(self._open, f"{folder}/{name}") for name in names}

    def _open(self, path: str) -> Image.Image:
        with self._fs.open(path, "rb") as file:
            image = Image.open(file)
            image.load()
        return image

    def _exists(self) -> bool:
        try:
            return self._fs.isdir(get_filepath_str(self._get_load_path(), self._protocol))
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}
