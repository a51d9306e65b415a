"""``SafetensorsDataset`` loads/saves model checkpoints and tensor caches as
safetensors files through fsspec (local, S3, GCS, ``memory://``...).

A checkpoint is never unpickled: safetensors holds raw tensor bytes and a JSON
header only, so loading a file cannot run code. Every file carries the sha256 of each
tensor and of the metadata (docs/decisions/0035-artefact-checksums.md); a file whose bytes
disagree with them, or that is cut short, is refused with an
:class:`~image_classification.errors.ArtefactError` naming it.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from copy import deepcopy
from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from image_classification.datasets.safetensors_checks import (
    CHECKSUM_KEY,
    HEADER_LENGTH_BYTES,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    CheckedTensors,
    checksums_entry,
    not_safetensors_message,
    read_header,
    read_metadata,
    tensor_entries,
)
from image_classification.errors import ArtefactError

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows only
_LOAD_OPTIONS = ("mmap",)
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
"""safetensors' dtype names (little-endian, as the format stores them) and the torch dtype each maps to."""


class SafetensorsDataset(AbstractVersionedDataset[dict, dict]):
    """``SafetensorsDataset`` loads/saves ``{"tensors": ..., "metadata": ...}``
    dicts from/to a safetensors file using an underlying filesystem.

    ``tensors`` maps names to ``torch.Tensor``; ``metadata`` is any
    JSON-serialisable dict (nesting allowed), stored as one JSON string under the
    safetensors metadata key ``"image_classification"``. Tensors are loaded on CPU.
    JSON rules apply to metadata: tuples come back as lists, non-string keys
    as strings.

    With ``load_args: {mmap: true}`` a local file is memory-mapped instead of read:
    ``load`` returns at once and a tensor's bytes are paged in from the file (or the
    operating system's page cache) only when a node reads them, so a node that needs
    one tensor of a large feature cache never reads the others. The mapping is
    private (copy on write): changing a loaded tensor never changes the file. Files
    on other filesystems (``s3://``, ``memory://``...) and non-POSIX systems (where a
    mapped file could not be replaced by the next save) are read whole, as without
    the option.

    Every save records the sha256 of each tensor and of the metadata; every load checks them (a
    mapped file checks each tensor the first time it is read from the returned ``tensors``
    mapping, so a stage pays only for the tensors it reads) and refuses a mismatch or a file cut
    short with an :class:`~image_classification.errors.ArtefactError`. Files saved before
    checksums existed load unchecked, with a warning.

    Local files are written atomically (temporary file in the same folder, then
    ``os.replace``), so a crash mid-save never leaves a half-written checkpoint.

    Examples:
        Using the YAML API:

        ```yaml
        classifier_checkpoint:
          type: image_classification.datasets.SafetensorsDataset
          filepath: data/06_models/classifier.safetensors
          versioned: true
        ```

        Using the Python API:

        >>> import torch
        >>> from image_classification.datasets import SafetensorsDataset
        >>>
        >>> dataset = SafetensorsDataset(filepath=tmp_path / "model.safetensors")
        >>> dataset.save({"tensors": {"w": torch.ones(2)}, "metadata": {"epoch": 3}})
        >>> reloaded = dataset.load()
        >>> assert reloaded["metadata"] == {"epoch": 3}
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {}
    DEFAULT_FS_ARGS: dict[str, Any] = {
        "open_args_load": {"mode": "rb"},
        "open_args_save": {"mode": "wb"},
    }

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str | os.PathLike,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new instance of ``SafetensorsDataset`` pointing to a concrete
        safetensors file on a specific filesystem.

        Args:
            filepath: Filepath in POSIX format to a safetensors file, optionally
                prefixed with an fsspec protocol like ``s3://`` or ``memory://``.
            load_args: ``{"mmap": true}`` to memory-map local files (see above); no
                other option exists.
            save_args: Accepted for catalog symmetry; ``safetensors.torch.save``
                takes no options besides the metadata this dataset writes, so it
                must be empty.
            version: If specified, should be an instance of
                ``kedro.io.core.Version``. If its ``load`` attribute is
                None, the latest version will be loaded. If its ``save``
                attribute is None, save version will be autogenerated.
            credentials: Credentials required to get access to the underlying
                filesystem.
            fs_args: Extra arguments for the filesystem class constructor, plus
                ``open_args_load`` / ``open_args_save`` for its ``open`` method.
            metadata: Any arbitrary metadata. This is ignored by Kedro, but may be
                consumed by users or external plugins.

        Raises:
            DatasetError: If ``load_args`` hold anything but ``mmap`` or ``save_args``
                hold any option.
        """
        if save_args:
            raise DatasetError(
                f"SafetensorsDataset takes no save_args, got {sorted(save_args)}: "
                "safetensors has no options for them."
            )
        unknown = sorted(set(load_args or {}) - set(_LOAD_OPTIONS))
        if unknown:
            raise DatasetError(
                f"SafetensorsDataset takes no load_args but {list(_LOAD_OPTIONS)}, got {unknown}."
            )

        _fs_args = deepcopy(fs_args) or {}
        _fs_open_args_load = _fs_args.pop("open_args_load", {})
        _fs_open_args_save = _fs_args.pop("open_args_save", {})
        _credentials = deepcopy(credentials) or {}

        protocol, path = get_protocol_and_path(filepath, version)
        if protocol == "memory":
            # Kedro keeps a URL's first component only for cloud protocols, so
            # memory://a/x and memory://b/x would both become /x; fsspec keeps it.
            path = fsspec.core.strip_protocol(str(filepath))
        if protocol == "file":
            _fs_args.setdefault("auto_mkdir", True)

        self._protocol = protocol
        self._fs = fsspec.filesystem(self._protocol, **_credentials, **_fs_args)

        self.metadata = metadata

        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        self._fs_open_args_load = {
            **self.DEFAULT_FS_ARGS["open_args_load"],
            **_fs_open_args_load,
        }
        self._fs_open_args_save = {
            **self.DEFAULT_FS_ARGS["open_args_save"],
            **_fs_open_args_save,
        }

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
        }

    def load(self) -> dict:
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        if (
            self._load_args.get("mmap")
            and isinstance(self._fs, LocalFileSystem)
            and os.name == "posix"
            and sys.byteorder == "little"
        ):
            return _load_mapped(load_path)

        with self._fs.open(load_path, **self._fs_open_args_load) as fs_file:
            raw = fs_file.read()

        header_length, header = read_header(load_path, raw, len(raw))
        try:
            tensors = load_safetensors(raw)
        except SafetensorError as exc:
            raise ArtefactError(not_safetensors_message(load_path, raw)) from exc
        metadata = read_metadata(load_path, header)
        return {"tensors": dict(CheckedTensors(load_path, tensors, header).items()), "metadata": metadata}

    def save(self, data: dict) -> None:
        tensors, metadata = _split_checkpoint(data)
        tensors, stored_metadata = _prepare_tensors(tensors), json.dumps(metadata, sort_keys=True)
        raw = save_safetensors(
            tensors, metadata={METADATA_KEY: stored_metadata, CHECKSUM_KEY: checksums_entry(tensors, stored_metadata)}
        )

        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        if isinstance(self._fs, LocalFileSystem):
            _write_local_atomically(save_path, raw)
        else:
            with self._fs.open(save_path, **self._fs_open_args_save) as fs_file:
                fs_file.write(raw)

        self._invalidate_cache()

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False

        return self._fs.exists(load_path)

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        """Invalidate underlying filesystem caches."""
        filepath = get_filepath_str(self._filepath, self._protocol)
        self._fs.invalidate_cache(filepath)


def _load_mapped(path: str) -> dict:
    """The ``{"tensors", "metadata"}`` of a local safetensors file, its tensors views of a
    private memory map of the file: nothing but the header is read until a tensor is used."""
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(HEADER_LENGTH_BYTES)
        header_length = int.from_bytes(head, "little")
        raw_header = head + file.read(min(header_length, MAX_HEADER_BYTES))
    header_length, header = read_header(path, raw_header, size)
    try:
        with safe_open(path, framework="pt"):
            pass  # safetensors' own checks of the header against the file (offsets, dtypes, length)
    except SafetensorError as exc:
        raise ArtefactError(not_safetensors_message(path, raw_header)) from exc
    mapped = torch.from_file(path, shared=False, size=size, dtype=torch.uint8)
    start_of_data = HEADER_LENGTH_BYTES + header_length
    tensors = {}
    for name, entry in tensor_entries(header).items():
        begin, end = entry["data_offsets"]
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:  # a dtype this project never writes (e.g. float8): safetensors copies it
            with safe_open(path, framework="pt") as stored:
                tensors[name] = stored.get_tensor(name)
            continue
        data = mapped[start_of_data + begin:start_of_data + end]
        if (start_of_data + begin) % dtype.itemsize:
            data = data.clone()  # a view needs aligned bytes; safetensors aligns them, but never assume
        tensors[name] = data.view(dtype).reshape(entry["shape"])
    metadata = read_metadata(path, header)
    return {"tensors": CheckedTensors(path, tensors, header), "metadata": metadata}


def _split_checkpoint(data: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check the ``{"tensors": ..., "metadata": ...}`` shape; return both parts."""
    if not isinstance(data, dict) or set(data) != {"tensors", "metadata"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            "SafetensorsDataset saves a dict with exactly the keys 'tensors' and "
            f"'metadata', got {keys}."
        )
    tensors, metadata = data["tensors"], data["metadata"]
    if not isinstance(tensors, dict) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor)
        for name, tensor in tensors.items()
    ):
        raise DatasetError("'tensors' must be a dict of str to torch.Tensor.")
    if not isinstance(metadata, dict):
        raise DatasetError(f"'metadata' must be a dict, got {type(metadata).__name__}.")
    return tensors, metadata


def _prepare_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make every tensor contiguous and give tensors that share memory their own
    copy, since safetensors refuses both non-contiguous and shared tensors."""
    prepared = {}
    seen_storages = set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        if storage in seen_storages:
            tensor = tensor.clone()
        elif storage[1] != 0:  # empty tensors have no storage to share
            seen_storages.add(storage)
        prepared[name] = tensor
    return prepared


def _write_local_atomically(path: str, raw: bytes) -> None:
    """Write to a temporary file next to ``path``, then rename it over ``path``,
    so readers see either the previous file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(
        directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    )
    # os.open with 0o666 keeps the usual umask permissions (mkstemp would give 0o600).
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(raw)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Persist the rename itself across a power loss (POSIX only)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


