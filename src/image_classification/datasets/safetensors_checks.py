"""What a :class:`~image_classification.datasets.SafetensorsDataset` checks before it hands out a
file's contents: that it is a whole safetensors file (not a pickle, not cut short) whose metadata and
tensors match the sha256 saved with them (docs/decisions/0035-artefact-checksums.md). Anything else
is an :class:`~image_classification.errors.ArtefactError` naming the file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from image_classification.checksums import tensor_sha256, text_sha256
from image_classification.errors import ArtefactError

logger = logging.getLogger(__name__)

METADATA_KEY = "image_classification"
"""Safetensors header key holding this project's metadata as one JSON string."""
CHECKSUM_KEY = "content_sha256"
"""Safetensors header key holding, as one JSON string, the sha256 of the metadata string and of each
tensor (:func:`~image_classification.checksums.tensor_sha256`); files saved before it have none."""
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses larger headers

HEADER_LENGTH_BYTES = 8  # safetensors files start with a little-endian u64
_PICKLE_PROTOCOL_PREFIX = b"\x80"
_ZIP_PREFIX = b"PK\x03\x04"  # ``torch.save`` writes a zip of pickles


class CheckedTensors(Mapping):
    """A loaded file's tensors, each checked against its recorded sha256 the first time it is read,
    so a stage that reads one tensor of a mapped file never hashes (nor pages in) the others."""

    def __init__(self, path: str, tensors: dict[str, torch.Tensor], header: dict) -> None:
        self._path, self._tensors = path, tensors
        self._expected = _recorded_checksums(path, header).get("tensors")
        self._checked: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._tensors[name]
        if self._expected is not None and name not in self._checked:
            if self._expected.get(name) != tensor_sha256(name, tensor):
                raise ArtefactError(
                    f"'{self._path}' is damaged: the bytes of its tensor '{name}' do not match the checksum saved "
                    f"with them ({CHECKSUM_KEY}), so they are not used; {ArtefactError.RERUN}")
            self._checked.add(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self._tensors)})"


def checksums_entry(tensors: dict[str, torch.Tensor], stored_metadata: str) -> str:
    """The :data:`CHECKSUM_KEY` header value for these tensors and this metadata string."""
    return json.dumps({"metadata": text_sha256(stored_metadata),
                       "tensors": {name: tensor_sha256(name, tensor) for name, tensor in tensors.items()}},
                      sort_keys=True)


_WARNED_UNCHECKED: set[str] = set()


def _recorded_checksums(path: str, header: dict) -> dict:
    """The checksums a file's header records; ``{}`` (and a warning, once per file) when it predates them."""
    stored = (header.get("__metadata__") or {}).get(CHECKSUM_KEY)
    others = sorted(set(header.get("__metadata__") or {}) - {METADATA_KEY, CHECKSUM_KEY})
    if stored is None and others:  # this project never wrote other keys: the checksums' key itself is damaged
        raise ArtefactError(f"'{path}' is damaged: its header has no '{CHECKSUM_KEY}' entry but has {others}, "
                            f"which this project does not write; {ArtefactError.RERUN}")
    if stored is None:
        if path not in _WARNED_UNCHECKED:
            _WARNED_UNCHECKED.add(path)
            logger.warning("'%s' was saved before artefacts carried checksums, so its contents cannot be checked; "
                           "%s to add them", path, ArtefactError.RERUN)
        return {}
    try:
        recorded = json.loads(stored)
    except json.JSONDecodeError:
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("tensors"), dict):
        raise ArtefactError(f"'{path}' is damaged: its '{CHECKSUM_KEY}' header entry is not the checksums this "
                            f"project writes; {ArtefactError.RERUN}")
    return recorded


def tensor_entries(header: dict) -> dict[str, dict]:
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def read_header(path: str, raw: bytes, size: int) -> tuple[int, dict]:
    """The header length and parsed header of a file of ``size`` bytes that starts with ``raw``
    (at least its whole header); an :class:`ArtefactError` if it is not a safetensors file or is
    shorter than its header promises."""
    header_length = int.from_bytes(raw[:HEADER_LENGTH_BYTES], "little")
    if len(raw) < HEADER_LENGTH_BYTES or header_length == 0:
        raise ArtefactError(not_safetensors_message(path, raw))
    if header_length > size - HEADER_LENGTH_BYTES:
        if header_length <= MAX_HEADER_BYTES and raw[HEADER_LENGTH_BYTES:HEADER_LENGTH_BYTES + 1] == b"{":
            raise ArtefactError(_truncated_message(path, HEADER_LENGTH_BYTES + header_length, size))
        raise ArtefactError(not_safetensors_message(path, raw))
    try:
        header = json.loads(raw[HEADER_LENGTH_BYTES:HEADER_LENGTH_BYTES + header_length])
        ends = [int(entry["data_offsets"][1]) for entry in tensor_entries(header).values()]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ArtefactError(not_safetensors_message(path, raw)) from exc
    promised = HEADER_LENGTH_BYTES + header_length + max(ends, default=0)
    if promised > size:
        raise ArtefactError(_truncated_message(path, promised, size))
    return header_length, header


def _truncated_message(path: str, promised: int, size: int) -> str:
    return (f"'{path}' is truncated: its safetensors header promises {promised:,} bytes, the file has {size:,} "
            f"(an interrupted copy or a full disk?); {ArtefactError.RERUN}")


def not_safetensors_message(path: str, raw: bytes) -> str:
    if raw.startswith(_ZIP_PREFIX):
        looks_like = " (it looks like a zip archive, e.g. a torch.save checkpoint)"
    elif raw.startswith(_PICKLE_PROTOCOL_PREFIX):
        looks_like = " (it looks like a pickle)"
    else:
        looks_like = ""
    return (
        f"'{path}' is not a safetensors checkpoint{looks_like}. It will not be "
        "unpickled, because unpickling can run arbitrary code. Re-create it: "
        f"{ArtefactError.RERUN}."
    )


def read_metadata(path: str, header: dict) -> dict[str, Any]:
    """Return this project's metadata from the parsed header of a safetensors file, checked
    against its recorded sha256 when the file has one."""
    stored = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if stored is None:
        raise ArtefactError(
            f"'{path}' is a safetensors file but has no '{METADATA_KEY}' metadata, "
            f"so it was not written by this project. Re-create it: {ArtefactError.RERUN}."
        )
    recorded = _recorded_checksums(path, header).get("metadata")
    if recorded is not None and recorded != text_sha256(stored):
        raise ArtefactError(f"'{path}' is damaged: its '{METADATA_KEY}' metadata does not match the checksum "
                            f"saved with it ({CHECKSUM_KEY}); {ArtefactError.RERUN}")
    try:
        metadata = json.loads(stored)
    except json.JSONDecodeError as exc:
        raise ArtefactError(
            f"'{path}' has '{METADATA_KEY}' metadata that is not valid JSON: {exc}"
        ) from exc
    if not isinstance(metadata, dict):
        raise ArtefactError(
            f"'{path}' has '{METADATA_KEY}' metadata that is not a JSON object."
        )
    return metadata
