"""Files no image reader may open or read to the end: pipes, sockets, devices (also behind links), files
over the size limit and files whose size lies, each with the reason it must be listed with.

The tests run as root, where file permissions do not stop a read, so "permission denied" is covered by
test_images.py only where the tests do not run as root.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

MAX_FILE_BYTES = 1_048_576
"""The max_file_bytes the reliability runs use: far above every good test image, far below what follows."""

SPECIAL_REASONS = {
    "fifo.jpg": "named pipe (FIFO)",
    "fifo_link.png": "named pipe (FIFO)",
    "socket.png": "a socket",
    "dev_zero_link.jpg": "a character device",
    "dev_null_link.png": "a character device",
    "huge.png": "too large",
    "lying_size.jpg": "too large",  # /proc/kallsyms: a regular file whose size reads 0, megabytes long
}


def lying_file() -> Path | None:
    """A regular file whose stat says 0 bytes but whose reading goes on for megabytes, if there is one."""
    for candidate in (Path("/proc/kallsyms"), Path("/proc/self/maps")):
        try:
            with candidate.open("rb") as stream:
                if candidate.stat().st_size == 0 and len(stream.read(MAX_FILE_BYTES + 1)) > MAX_FILE_BYTES:
                    return candidate
        except OSError:
            continue
    return None


def write_special_files(folder: Path) -> dict[str, Path]:
    """One of each kind in :data:`SPECIAL_REASONS` (the lying one only where the system has such a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "fifo.jpg")
    os.symlink(folder / "fifo.jpg", folder / "fifo_link.png")
    with socket.socket(socket.AF_UNIX) as unix_socket:  # the socket file stays after it is closed
        unix_socket.bind(str(folder / "socket.png"))
    os.symlink("/dev/zero", folder / "dev_zero_link.jpg")
    os.symlink("/dev/null", folder / "dev_null_link.png")
    with (folder / "huge.png").open("wb") as huge:  # sparse: 1 GB that takes no room
        huge.truncate(1_000_000_000)
    liar = lying_file()
    if liar is not None:
        os.symlink(liar, folder / "lying_size.jpg")
    return {name: folder / name for name in SPECIAL_REASONS if (folder / name).is_symlink() or
            (folder / name).exists()}
