"""Files that must never be opened or read to the end, one at a time through the one reader of image bytes
(image_files.read_bytes, which data_prep, train, score, predict and the galleries all go through): each is
refused with its reason within seconds, never a hang. Whole runs with these files are in
test_bad_images_in_whole_runs.py."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from image_classification.images import inspect_images
from image_classification.image_files import CHANGED_SINCE_INDEXED, ImageLimits, ImageReadError, read_bytes

from ..conftest import noise_image, png_bytes
from .special_files import (
    MAX_FILE_BYTES,
    SPECIAL_REASONS,
    lying_file,
    write_special_files,
)

LIMITS = ImageLimits(max_file_bytes=MAX_FILE_BYTES, read_timeout_s=1.0)
HANG_SECONDS = 10


def reason_within(seconds: float, read) -> str:
    """The reason ``read()`` refuses a file, failing the test if it takes ``seconds`` (a hang)."""
    outcome: dict = {}

    def work() -> None:
        try:
            read()
            outcome["reason"] = ""
        except ImageReadError as error:
            outcome["reason"] = str(error)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still reading after {seconds} s: a hang"
    return outcome["reason"]


@pytest.mark.parametrize("name", sorted(SPECIAL_REASONS))
def test_special_files_are_refused_before_any_read(tmp_path, name, tally):
    files = write_special_files(tmp_path)
    if name not in files:
        pytest.skip(f"this system has no file for {name}")
    reason = reason_within(HANG_SECONDS, lambda: read_bytes(str(files[name]), LIMITS))
    assert SPECIAL_REASONS[name] in reason
    tally.add("special files refused (pipes, sockets, devices, oversized)")


def test_a_file_whose_size_lies_is_read_no_further_than_the_limit(tmp_path):
    liar = lying_file()
    if liar is None:
        pytest.skip("no regular file here reports a size of 0 while holding more")
    started = time.perf_counter()
    reason = reason_within(HANG_SECONDS, lambda: read_bytes(str(liar), LIMITS))
    assert "too large: its size said less" in reason
    assert time.perf_counter() - started < 2


def test_a_file_changed_since_it_was_indexed_is_refused_and_names_the_stage_to_rerun(tmp_path):
    path = tmp_path / "picture.png"
    path.write_bytes(png_bytes(noise_image(1, (32, 32))))
    indexed = hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_bytes(str(path), LIMITS, indexed) == path.read_bytes()
    for change in (lambda: path.write_bytes(path.read_bytes()[:50]),  # truncated
                   lambda: path.write_bytes(png_bytes(noise_image(2, (32, 32))))):  # replaced
        change()
        assert reason_within(HANG_SECONDS, lambda: read_bytes(str(path), LIMITS, indexed)) == CHANGED_SINCE_INDEXED
    assert "rerun data_prep" in CHANGED_SINCE_INDEXED


class StalledFileSystem(MemoryFileSystem):
    """A remote file system whose reads never return (a network share that stopped answering)."""

    protocol = "stalled"
    release = threading.Event()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol("memory://" + path.removeprefix("stalled://"))

    def _open(self, path, mode="rb", **kwargs):
        stream = super()._open(path, mode, **kwargs)
        original = stream.read

        def read(*args):
            self.release.wait()
            return original(*args)

        stream.read = read
        return stream


@pytest.fixture
def stalled():
    fsspec.register_implementation("stalled", StalledFileSystem, clobber=True)
    filesystem = StalledFileSystem()
    filesystem.pipe("/share/photo.png", png_bytes(noise_image(3, (32, 32))))
    yield filesystem
    StalledFileSystem.release.set()  # let the abandoned reads finish
    filesystem.rm("/share", recursive=True)


def test_a_stalled_remote_read_becomes_a_reason_after_the_deadline(stalled, tally):
    started = time.perf_counter()
    reason = reason_within(HANG_SECONDS, lambda: read_bytes("stalled://share/photo.png", LIMITS))
    assert reason.startswith("read timed out after 1 s")
    assert time.perf_counter() - started < 3
    report = inspect_images(["stalled://share/photo.png"], LIMITS, workers=1)  # data_prep's check
    assert report["reason"].iloc[0].startswith("read timed out") and not report["ok"].iloc[0]
    tally.add("stalled remote reads turned into reasons", 2)


def test_a_remote_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    memory = fsspec.filesystem("memory")
    memory.pipe("/big/photo.png", b"\0" * (MAX_FILE_BYTES + 1))
    try:
        assert "too large: 1,048,577 bytes" in reason_within(HANG_SECONDS,
                                                           lambda: read_bytes("memory://big/photo.png", LIMITS))
    finally:
        memory.rm("/big", recursive=True)


def test_a_csv_source_that_is_a_pipe_is_refused_not_opened(tmp_path):
    import os

    from image_classification.errors import SourceError
    from image_classification.sources import read_labels_csv

    os.mkfifo(tmp_path / "labels.csv")
    outcome: dict = {}

    def work() -> None:
        try:
            read_labels_csv(str(tmp_path / "labels.csv"))
        except SourceError as error:
            outcome["error"] = str(error)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(HANG_SECONDS)
    assert not worker.is_alive() and "is not a regular file" in outcome["error"]


def test_special_files_kept_in_a_path_object_still_exist_for_the_next_test(tmp_path):
    files = write_special_files(tmp_path)
    assert all(Path(path).is_symlink() or Path(path).exists() for path in files.values())
