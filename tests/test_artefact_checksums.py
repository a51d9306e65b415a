"""Artefacts carry checksums: a damaged or cut-short file is refused with one message naming it; a file
saved before checksums existed still loads (docs/decisions/0035-artefact-checksums.md)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from image_classification.artefacts import Checkpoint, FeatureCache, ScoredIndex
from image_classification.datasets import SafetensorsDataset
from image_classification.datasets.safetensors_checks import CHECKSUM_KEY, METADATA_KEY
from image_classification.errors import ArtefactError, DataError

from .test_artefacts import checkpoint, feature_cache, index_of, scored_index  # noqa: F401 - a fixture

MAPPED = {"mmap": True}  # how the catalog loads backbone_features


def saved(path: Path, payload: dict, load_args: dict | None = None) -> SafetensorsDataset:
    dataset = SafetensorsDataset(filepath=str(path), load_args=load_args)
    dataset.save(payload)
    return dataset


def flip_byte(path: Path, at: int) -> None:
    """Overwrite one byte in place: the same size and header, other contents."""
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def tensor_start(path: Path, name: str) -> int:
    """Where ``name``'s bytes begin in the file."""
    with path.open("rb") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
    return 8 + length + header[name]["data_offsets"][0]


@pytest.mark.parametrize("artefact", ["feature_cache", "scored_index", "checkpoint"])
def test_a_byte_flipped_artefact_is_refused_naming_the_file(tmp_path, checkpoint, artefact):  # noqa: F811
    index = index_of(6)
    payload, cls, load_args, tensor = {
        "feature_cache": (feature_cache(index).to_payload(), FeatureCache, MAPPED, "pooled"),
        "scored_index": (scored_index(index, checkpoint).to_payload(), ScoredIndex, None, "score"),
        "checkpoint": (checkpoint.to_payload(), Checkpoint, None, sorted(checkpoint.tensors)[-1]),
    }[artefact]
    path = tmp_path / f"{artefact}.safetensors"
    dataset = saved(path, payload, load_args)
    flip_byte(path, tensor_start(path, tensor) + 1)
    with pytest.raises(DataError) as refused:
        getattr(cls.from_payload(dataset.load()), "pooled", None)  # a mapped cache checks a tensor when it is read
    message = str(refused.value)
    assert str(path) in message and f"tensor '{tensor}'" in message and "damaged" in message
    assert "\n" not in message


@pytest.mark.parametrize("load_args", [None, MAPPED], ids=["read", "mmap"])
def test_damaged_metadata_is_refused(tmp_path, load_args):
    path = tmp_path / "cache.safetensors"
    saved(path, {"tensors": {"w": torch.ones(3)}, "metadata": {"threshold": 0.5}})
    with safe_open(str(path), framework="pt") as stored:
        header = stored.metadata()
    header[METADATA_KEY] = header[METADATA_KEY].replace("0.5", "0.7")  # a flipped digit, checksum unchanged
    save_file({"w": torch.ones(3)}, str(path), metadata=header)
    with pytest.raises(ArtefactError, match=f"'{path}' is damaged: its '{METADATA_KEY}' metadata"):
        SafetensorsDataset(filepath=str(path), load_args=load_args).load()


def test_a_mapped_file_checks_only_the_tensors_a_stage_reads(tmp_path):
    """So that checking does not eat the memory map's gain (a stage reading the pooled features of a
    large cache pages in nothing else)."""
    path = tmp_path / "cache.safetensors"
    dataset = saved(path, {"tensors": {"pooled": torch.ones(4), "patches": torch.ones(64)}, "metadata": {}}, MAPPED)
    flip_byte(path, tensor_start(path, "patches"))
    tensors = dataset.load()["tensors"]
    assert torch.equal(tensors["pooled"], torch.ones(4))
    with pytest.raises(ArtefactError, match="tensor 'patches'"):
        tensors["patches"]


@pytest.mark.parametrize("load_args", [None, MAPPED], ids=["read", "mmap"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.001])
def test_a_truncated_file_is_reported_as_truncated_with_both_sizes(tmp_path, load_args, keep):
    path = tmp_path / "cache.safetensors"
    saved(path, feature_cache(index_of(20)).to_payload())
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:max(9, int(size * keep))])
    with pytest.raises(ArtefactError) as refused:
        SafetensorsDataset(filepath=str(path), load_args=load_args).load()
    message = str(refused.value)
    assert f"'{path}' is truncated" in message and f"has {path.stat().st_size:,}" in message
    assert "pipeline that writes it" in message and "unpickled" not in message


@pytest.mark.parametrize("load_args", [None, MAPPED], ids=["read", "mmap"])
def test_a_file_saved_before_checksums_loads_with_a_warning(tmp_path, caplog, load_args):
    path = tmp_path / f"old_{bool(load_args)}.safetensors"  # the warning comes once per file
    save_file({"w": torch.arange(4.0)}, str(path), metadata={METADATA_KEY: json.dumps({"epoch": 2})})
    with caplog.at_level(logging.WARNING):
        loaded = SafetensorsDataset(filepath=str(path), load_args=load_args).load()
    assert torch.equal(loaded["tensors"]["w"], torch.arange(4.0)) and loaded["metadata"] == {"epoch": 2}
    assert any("before artefacts carried checksums" in record.getMessage() for record in caplog.records)


def test_every_save_records_a_checksum_per_tensor(tmp_path):
    path = tmp_path / "cache.safetensors"
    saved(path, feature_cache(index_of(3)).to_payload())
    with safe_open(str(path), framework="pt") as stored:
        recorded = json.loads(stored.metadata()[CHECKSUM_KEY])
    assert set(recorded["tensors"]) == {"head_input", "pooled"} and len(recorded["metadata"]) == 64


def test_a_damaged_training_state_is_dropped_with_a_warning_so_training_starts_again(tmp_path, caplog):
    """Refusing it would stop every later training run too (train itself writes it); it holds only time."""
    from image_classification.datasets import TrainingStateDataset

    path = tmp_path / "training_state.safetensors"
    store = TrainingStateDataset(filepath=str(path)).load()
    store.write({"tensors": {"weights": torch.ones(16)}, "metadata": {"epoch": 3}})
    flip_byte(path, tensor_start(path, "weights") + 2)
    with caplog.at_level(logging.WARNING):
        assert store.read() is None
    assert "training starts from the first epoch" in caplog.text and "is damaged" in caplog.text



def test_an_operating_point_edited_or_damaged_since_evaluate_saved_it_is_refused(tmp_path, checkpoint):  # noqa: F811
    """The threshold predict applies must be the one evaluate chose: a record whose contents disagree with
    the checksum it was saved with is refused through the catalog's JSON dataset; one saved before
    checksums existed (no content_sha256) still loads."""
    from kedro_datasets.json import JSONDataset

    from image_classification.operating_point import OperatingPoint
    from image_classification.checksums import CONTENT_SHA256

    point = OperatingPoint.for_checkpoint({"threshold": 0.47, "rule": "point", "reached": True}, checkpoint)
    dataset = JSONDataset(filepath=str(tmp_path / "operating_point.json"))
    dataset.save(point.to_payload())
    assert OperatingPoint.from_payload(dataset.load()) == point  # a JSON round trip keeps the checksum valid
    edited = dataset.load() | {"threshold": 0.05}  # e.g. lowered by hand to accept more
    with pytest.raises(ArtefactError, match="'operating_point' holds contents that disagree with the checksum"):
        OperatingPoint.from_payload(edited)
    older = {key: value for key, value in point.to_payload().items() if key != CONTENT_SHA256}
    assert OperatingPoint.from_payload(older) == point
