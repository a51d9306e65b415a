import io
import os
import pickle
import time
import uuid
import zipfile
from pathlib import Path, PurePosixPath

import fsspec
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version, generate_timestamp
from safetensors.torch import save_file

from image_classification.datasets import SafetensorsDataset
from image_classification.datasets import safetensors_dataset as module


@pytest.fixture
def filepath_safetensors(tmp_path):
    return (tmp_path / "model.safetensors").as_posix()


@pytest.fixture(params=[False, True], ids=["read", "mmap"])
def safetensors_dataset(filepath_safetensors, request):
    """The dataset as checkpoints use it (files read whole) and as the feature cache does (mapped)."""
    return SafetensorsDataset(
        filepath=filepath_safetensors, load_args={"mmap": True} if request.param else None
    )


@pytest.fixture(params=[None])
def load_version(request):
    return request.param


@pytest.fixture(params=[None])
def save_version(request):
    return request.param or generate_timestamp()


@pytest.fixture
def versioned_safetensors_dataset(filepath_safetensors, load_version, save_version):
    return SafetensorsDataset(
        filepath=filepath_safetensors, version=Version(load_version, save_version)
    )


@pytest.fixture
def checkpoint():
    return {
        "tensors": {
            "backbone.weight": torch.randn(4, 3, dtype=torch.float32),
            "head.weight": torch.randn(2, 4).to(torch.float16),
            "class_index": torch.tensor([0, 1, 2**40], dtype=torch.int64),
            "scalar": torch.tensor(1.5),
        },
        "metadata": {
            "backbone": "efficientnet_lite0",
            "epoch": 3,
            "threshold": 0.73,
            "classes": ["cat", "dog"],
            "preprocessing": {"size": 224, "mean": [0.485, 0.456, 0.406]},
            "frozen": True,
            "note": None,
        },
    }


@pytest.fixture
def memory_filepath():
    path = f"memory://safetensors-tests/{uuid.uuid4().hex}/model.safetensors"
    yield path
    fs = fsspec.filesystem("memory")
    folder = path.rsplit("/", 1)[0]
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def assert_checkpoints_equal(actual, expected):
    assert actual["metadata"] == expected["metadata"]
    assert actual["tensors"].keys() == expected["tensors"].keys()
    for name, tensor in expected["tensors"].items():
        loaded = actual["tensors"][name]
        assert loaded.dtype == tensor.dtype, name
        assert loaded.device.type == "cpu"
        assert torch.equal(loaded, tensor), name


class _WriteMarkerOnUnpickle:
    """What an attacker would put in a checkpoint: unpickling creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


class TestSafetensorsDataset:
    def test_save_and_load(self, safetensors_dataset, checkpoint):
        safetensors_dataset.save(checkpoint)
        reloaded = safetensors_dataset.load()
        assert_checkpoints_equal(reloaded, checkpoint)

    def test_metadata_is_one_json_string_under_project_key_beside_its_checksums(
        self, safetensors_dataset, filepath_safetensors, checkpoint
    ):
        from safetensors import safe_open

        safetensors_dataset.save(checkpoint)
        with safe_open(filepath_safetensors, framework="pt") as f:
            assert set(f.metadata()) == {"image_classification", "content_sha256"}

    def test_exists(self, safetensors_dataset, checkpoint):
        assert not safetensors_dataset.exists()
        safetensors_dataset.save(checkpoint)
        assert safetensors_dataset.exists()

    def test_load_missing_file(self, safetensors_dataset):
        pattern = r"Failed while loading data from dataset .*SafetensorsDataset\(.*\)"
        with pytest.raises(DatasetError, match=pattern):
            safetensors_dataset.load()

    def test_describe_contains_filepath(
        self, safetensors_dataset, filepath_safetensors
    ):
        description = safetensors_dataset._describe()
        assert description["filepath"] == PurePosixPath(filepath_safetensors)
        assert description["protocol"] == "file"
        assert filepath_safetensors in str(safetensors_dataset)

    @pytest.mark.parametrize(
        "filepath,instance_type",
        [
            ("memory://models/model.safetensors", MemoryFileSystem),
            ("/tmp/model.safetensors", LocalFileSystem),
            ("file:///tmp/model.safetensors", LocalFileSystem),
        ],
    )
    def test_protocol_usage(self, filepath, instance_type):
        dataset = SafetensorsDataset(filepath=filepath)
        assert isinstance(dataset._fs, instance_type)
        path = filepath.split("://", 1)[-1]
        assert str(dataset._filepath).lstrip("/") == path.lstrip("/")
        assert isinstance(dataset._filepath, PurePosixPath)

    def test_memory_urls_keep_their_first_folder(self, checkpoint):
        """``get_protocol_and_path`` alone maps both to ``/model.safetensors``."""
        folder = f"memory://{uuid.uuid4().hex}"
        first = SafetensorsDataset(filepath=f"{folder}/a/model.safetensors")
        second = SafetensorsDataset(filepath=f"{folder}/b/model.safetensors")
        try:
            first.save(checkpoint)
            assert not second.exists()
        finally:
            first._fs.rm(folder.split("://", 1)[1], recursive=True)

    def test_memory_protocol_round_trip(self, memory_filepath, checkpoint):
        dataset = SafetensorsDataset(filepath=memory_filepath)
        assert not dataset.exists()
        dataset.save(checkpoint)
        assert dataset.exists()
        assert_checkpoints_equal(dataset.load(), checkpoint)

    def test_release_invalidates_fs_cache(self):
        dataset = SafetensorsDataset(filepath="memory://release/model.safetensors")
        calls = []
        dataset._fs.invalidate_cache = calls.append
        dataset.release()
        assert calls == ["/release/model.safetensors"]

    def test_creates_missing_parent_folders(self, tmp_path, checkpoint):
        dataset = SafetensorsDataset(
            filepath=(tmp_path / "06_models" / "run" / "model.safetensors").as_posix()
        )
        dataset.save(checkpoint)
        assert_checkpoints_equal(dataset.load(), checkpoint)

    def test_shared_and_non_contiguous_tensors_are_saved(self, safetensors_dataset):
        weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        tensors = {
            "weight": weight,
            "tied_weight": weight,  # e.g. tied embedding and output layer
            "first_row": weight[0],
            "transposed": weight.t(),
        }
        safetensors_dataset.save({"tensors": tensors, "metadata": {}})
        reloaded = safetensors_dataset.load()["tensors"]
        for name, tensor in tensors.items():
            assert torch.equal(reloaded[name], tensor), name

    def test_save_does_not_modify_input(self, safetensors_dataset):
        weight = torch.ones(2, 3, requires_grad=True)
        transposed = torch.arange(6.0).reshape(2, 3).t()
        safetensors_dataset.save(
            {"tensors": {"w": weight, "t": transposed}, "metadata": {}}
        )
        assert weight.requires_grad
        assert not transposed.is_contiguous()

    def test_saves_empty_and_bool_tensors(self, safetensors_dataset):
        tensors = {
            "empty": torch.empty(0, 3),
            "other_empty": torch.empty(0),
            "mask": torch.tensor([True, False]),
            "bf16": torch.randn(3).to(torch.bfloat16),
        }
        safetensors_dataset.save({"tensors": tensors, "metadata": {}})
        reloaded = safetensors_dataset.load()
        assert_checkpoints_equal(reloaded, {"tensors": tensors, "metadata": {}})

    @pytest.mark.parametrize(
        "data",
        [
            {"tensors": {"w": torch.ones(1)}},
            {"tensors": {"w": torch.ones(1)}, "metadata": {}, "extra": 1},
            {"tensors": {"w": [1.0]}, "metadata": {}},
            {"tensors": {"w": torch.ones(1)}, "metadata": "epoch 3"},
            torch.ones(1),
        ],
    )
    def test_save_rejects_wrong_shape(self, safetensors_dataset, data):
        with pytest.raises(DatasetError):
            safetensors_dataset.save(data)
        assert not safetensors_dataset.exists()

    def test_save_rejects_non_json_metadata(self, safetensors_dataset):
        data = {"tensors": {"w": torch.ones(1)}, "metadata": {"when": object()}}
        with pytest.raises(DatasetError, match="not JSON serializable"):
            safetensors_dataset.save(data)
        assert not safetensors_dataset.exists()

    @pytest.mark.parametrize("args", ["load_args", "save_args"])
    def test_rejects_load_and_save_args(self, filepath_safetensors, args):
        with pytest.raises(DatasetError, match=f"takes no {args}.*'x'"):
            SafetensorsDataset(filepath=filepath_safetensors, **{args: {"x": 1, "mmap": True}})

    def test_mapped_tensors_are_private_copies_on_write(self, filepath_safetensors, checkpoint):
        dataset = SafetensorsDataset(filepath=filepath_safetensors, load_args={"mmap": True})
        dataset.save(checkpoint)
        on_disk = Path(filepath_safetensors).read_bytes()
        loaded = dataset.load()["tensors"]
        # mapped, not read: every tensor is a view of one storage the size of the whole file
        storages = {tensor.untyped_storage().data_ptr() for tensor in loaded.values()}
        assert len(storages) == 1
        assert loaded["scalar"].untyped_storage().nbytes() == len(on_disk)
        loaded["backbone.weight"].mul_(-3.0)
        loaded["class_index"][0] = 7
        assert Path(filepath_safetensors).read_bytes() == on_disk
        assert_checkpoints_equal(dataset.load(), checkpoint)

    def test_saving_over_a_mapped_file_keeps_what_was_loaded(self, filepath_safetensors, checkpoint):
        # a notebook holds the last run's feature cache while train writes the next one
        dataset = SafetensorsDataset(filepath=filepath_safetensors, load_args={"mmap": True})
        dataset.save(checkpoint)
        held = dataset.load()
        replacement = {"tensors": {"w": torch.arange(6.0)}, "metadata": {"epoch": 4}}
        dataset.save(replacement)
        assert_checkpoints_equal(held, checkpoint)
        assert_checkpoints_equal(dataset.load(), replacement)

    def test_mmap_on_other_filesystems_reads_the_file(self, memory_filepath, checkpoint):
        dataset = SafetensorsDataset(filepath=memory_filepath, load_args={"mmap": True})
        dataset.save(checkpoint)
        assert_checkpoints_equal(dataset.load(), checkpoint)

    def test_load_refuses_pickle_without_running_it(
        self, safetensors_dataset, filepath_safetensors, tmp_path
    ):
        # The payload really does run when unpickled...
        control_marker = tmp_path / "control_marker"
        pickle.loads(pickle.dumps(_WriteMarkerOnUnpickle(control_marker)))
        assert control_marker.exists()
        # ...but the dataset never unpickles it.
        marker = tmp_path / "marker"
        Path(filepath_safetensors).write_bytes(
            pickle.dumps(_WriteMarkerOnUnpickle(marker))
        )
        with pytest.raises(DatasetError) as excinfo:
            safetensors_dataset.load()
        message = str(excinfo.value)
        assert filepath_safetensors in message
        assert "is not a safetensors checkpoint" in message
        assert "will not be unpickled" in message
        assert "arbitrary code" in message
        assert "pipeline that writes it" in message  # `kedro run` names it (cli.py)
        assert not marker.exists()

    def test_load_refuses_torch_save_checkpoint(
        self, safetensors_dataset, filepath_safetensors, tmp_path
    ):
        marker = tmp_path / "marker"
        torch.save(
            {"w": torch.ones(2), "payload": _WriteMarkerOnUnpickle(marker)},
            filepath_safetensors,
        )
        with pytest.raises(DatasetError, match="torch.save checkpoint"):
            safetensors_dataset.load()
        assert not marker.exists()

    def test_load_refuses_zip(self, safetensors_dataset, filepath_safetensors):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("weights.bin", b"\x00" * 16)
        Path(filepath_safetensors).write_bytes(buffer.getvalue())
        with pytest.raises(DatasetError, match="is not a safetensors checkpoint"):
            safetensors_dataset.load()

    @pytest.mark.parametrize("content", [b"", b"abc", b"\xff" * 8 + b"{"])
    def test_load_refuses_garbage(
        self, safetensors_dataset, filepath_safetensors, content
    ):
        Path(filepath_safetensors).write_bytes(content)
        with pytest.raises(DatasetError, match="is not a safetensors checkpoint"):
            safetensors_dataset.load()

    def test_load_refuses_missing_metadata_key(
        self, safetensors_dataset, filepath_safetensors
    ):
        save_file({"w": torch.ones(2)}, filepath_safetensors, metadata={"format": "pt"})
        with pytest.raises(DatasetError, match="no 'image_classification' metadata"):
            safetensors_dataset.load()

    def test_load_refuses_metadata_that_is_not_json(
        self, safetensors_dataset, filepath_safetensors
    ):
        save_file(
            {"w": torch.ones(2)},
            filepath_safetensors,
            metadata={"image_classification": "{epoch: 3"},
        )
        with pytest.raises(DatasetError, match="not valid JSON"):
            safetensors_dataset.load()

    @pytest.mark.parametrize("failing_step", ["fsync", "replace"])
    def test_crash_during_save_keeps_previous_file(
        self,
        safetensors_dataset,
        filepath_safetensors,
        checkpoint,
        monkeypatch,
        failing_step,
    ):
        safetensors_dataset.save(checkpoint)
        previous_bytes = Path(filepath_safetensors).read_bytes()

        def crash(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(module.os, failing_step, crash)
        bigger = {
            "tensors": {"backbone.weight": torch.zeros(1000, 1000)},
            "metadata": {"epoch": 4},
        }
        with pytest.raises(DatasetError, match="disk full"):
            safetensors_dataset.save(bigger)
        monkeypatch.undo()

        assert Path(filepath_safetensors).read_bytes() == previous_bytes
        assert_checkpoints_equal(safetensors_dataset.load(), checkpoint)
        assert os.listdir(Path(filepath_safetensors).parent) == ["model.safetensors"]

    def test_crash_mid_write_keeps_previous_file(
        self, safetensors_dataset, filepath_safetensors, checkpoint, monkeypatch
    ):
        """The temporary file gets half the bytes, then the process 'dies'."""
        safetensors_dataset.save(checkpoint)
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, file):
                self._file = file

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._file.close()

            def write(self, raw):
                self._file.write(raw[: len(raw) // 2])
                self._file.flush()
                raise KeyboardInterrupt

        monkeypatch.setattr(
            module.os, "fdopen", lambda *a, **k: HalfWriter(real_fdopen(*a, **k))
        )
        with pytest.raises(KeyboardInterrupt):
            safetensors_dataset.save({"tensors": {"w": torch.ones(10)}, "metadata": {}})
        monkeypatch.undo()

        assert_checkpoints_equal(safetensors_dataset.load(), checkpoint)
        assert os.listdir(Path(filepath_safetensors).parent) == ["model.safetensors"]

    def test_overwrite_keeps_usual_file_permissions(
        self, safetensors_dataset, filepath_safetensors, checkpoint
    ):
        umask = os.umask(0o022)
        os.umask(umask)
        safetensors_dataset.save(checkpoint)
        mode = os.stat(filepath_safetensors).st_mode & 0o777
        assert mode == 0o666 & ~umask


class TestSafetensorsDatasetVersioned:
    def test_version_str_repr(self, load_version, save_version):
        filepath = "model.safetensors"
        ds = SafetensorsDataset(filepath=filepath)
        ds_versioned = SafetensorsDataset(
            filepath=filepath, version=Version(load_version, save_version)
        )
        assert filepath in str(ds)
        assert "version" not in str(ds)
        assert filepath in str(ds_versioned)
        assert f"version=Version(load={load_version}, save='{save_version}')" in str(
            ds_versioned
        )
        assert "SafetensorsDataset" in str(ds_versioned)
        assert "protocol" in str(ds_versioned)

    def test_save_and_load(self, versioned_safetensors_dataset, checkpoint):
        versioned_safetensors_dataset.save(checkpoint)
        assert_checkpoints_equal(versioned_safetensors_dataset.load(), checkpoint)

    def test_load_latest_version(self, filepath_safetensors, checkpoint):
        dataset = SafetensorsDataset(
            filepath=filepath_safetensors, version=Version(None, None)
        )
        first = {"tensors": {"w": torch.zeros(2)}, "metadata": {"epoch": 1}}
        second = {"tensors": {"w": torch.ones(2)}, "metadata": {"epoch": 2}}
        dataset.save(first)
        time.sleep(0.01)  # version timestamps have millisecond resolution
        dataset.save(second)

        assert len(dataset.list_versions()) == 2
        reloaded = SafetensorsDataset(
            filepath=filepath_safetensors, version=Version(None, None)
        ).load()
        assert_checkpoints_equal(reloaded, second)

    def test_load_specific_version(self, filepath_safetensors):
        first = {"tensors": {"w": torch.zeros(2)}, "metadata": {"epoch": 1}}
        second = {"tensors": {"w": torch.ones(2)}, "metadata": {"epoch": 2}}
        versions = {
            "2024-01-01T00.00.00.000Z": first,
            "2024-01-02T00.00.00.000Z": second,
        }
        for version, data in versions.items():
            SafetensorsDataset(
                filepath=filepath_safetensors, version=Version(None, version)
            ).save(data)

        pinned = SafetensorsDataset(
            filepath=filepath_safetensors,
            version=Version("2024-01-01T00.00.00.000Z", None),
        )
        assert_checkpoints_equal(pinned.load(), first)

    def test_catalog_entry(self, filepath_safetensors, checkpoint):
        catalog = DataCatalog.from_config(
            {
                "classifier_checkpoint": {
                    "type": "image_classification.datasets.SafetensorsDataset",
                    "filepath": filepath_safetensors,
                    "versioned": True,
                }
            }
        )
        catalog.save("classifier_checkpoint", checkpoint)
        assert_checkpoints_equal(catalog.load("classifier_checkpoint"), checkpoint)

    def test_no_versions(self, versioned_safetensors_dataset):
        pattern = r"Did not find any versions for .*SafetensorsDataset\(.+\)"
        with pytest.raises(DatasetError, match=pattern):
            versioned_safetensors_dataset.load()

    def test_exists(self, versioned_safetensors_dataset, checkpoint):
        assert not versioned_safetensors_dataset.exists()
        versioned_safetensors_dataset.save(checkpoint)
        assert versioned_safetensors_dataset.exists()

    def test_prevent_overwrite(self, versioned_safetensors_dataset, checkpoint):
        versioned_safetensors_dataset.save(checkpoint)
        pattern = (
            r"Save path \'.+\' for .*SafetensorsDataset\(.+\) must "
            r"not exist if versioning is enabled\."
        )
        with pytest.raises(DatasetError, match=pattern):
            versioned_safetensors_dataset.save(checkpoint)

    @pytest.mark.parametrize(
        "load_version", ["2019-01-01T23.59.59.999Z"], indirect=True
    )
    @pytest.mark.parametrize(
        "save_version", ["2019-01-02T00.00.00.000Z"], indirect=True
    )
    def test_save_version_warning(
        self, versioned_safetensors_dataset, load_version, save_version, checkpoint
    ):
        pattern = (
            f"Save version '{save_version}' did not match load version "
            f"'{load_version}' for .*SafetensorsDataset\\(.+\\)"
        )
        with pytest.warns(UserWarning, match=pattern):
            versioned_safetensors_dataset.save(checkpoint)

    def test_http_filesystem_no_versioning(self):
        pattern = "Versioning is not supported for HTTP protocols."
        with pytest.raises(DatasetError, match=pattern):
            SafetensorsDataset(
                filepath="https://example.com/model.safetensors",
                version=Version(None, None),
            )

    def test_versioning_existing_dataset(
        self, safetensors_dataset, versioned_safetensors_dataset, checkpoint
    ):
        """Check the error when attempting to save a versioned dataset on top of an
        already existing (non-versioned) dataset."""
        safetensors_dataset.save(checkpoint)
        assert safetensors_dataset.exists()
        assert safetensors_dataset._filepath == versioned_safetensors_dataset._filepath
        pattern = (
            f"(?=.*file with the same name already exists in the directory)"
            f"(?=.*{versioned_safetensors_dataset._filepath.parent.as_posix()})"
        )
        with pytest.raises(DatasetError, match=pattern):
            versioned_safetensors_dataset.save(checkpoint)

        # Remove non-versioned dataset and try again
        Path(safetensors_dataset._filepath.as_posix()).unlink()
        versioned_safetensors_dataset.save(checkpoint)
        assert versioned_safetensors_dataset.exists()

    def test_memory_protocol_versioning(self, memory_filepath, checkpoint):
        dataset = SafetensorsDataset(
            filepath=memory_filepath, version=Version(None, None)
        )
        dataset.save(checkpoint)
        assert dataset.exists()
        assert_checkpoints_equal(dataset.load(), checkpoint)
        assert len(dataset.list_versions()) == 1
