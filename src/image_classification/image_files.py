"""The only code that opens image files: read a local path or an fsspec URL within limits, turning every
file-system failure (a missing file, a pipe, a device, an unknown URL scheme, a refused connection) into
a reason; what counts as a usable image (:class:`ImageLimits`). Decoding is :mod:`image_classification.images`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass

import fsspec

from image_classification.errors import ParameterError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


@dataclass(frozen=True)
class ImageLimits:
    """What counts as a usable image.

    Attributes:
        min_side: the shortest side, in pixels, below which an image is rejected as too small.
        max_pixels: width x height above which an image is rejected before it is decoded
            (a decompression bomb declares a huge size in a few bytes).
        max_file_bytes: files larger than this are rejected before they are read, and a read
            stops here whatever size the file claimed (a link to /dev/zero never ends).
        read_timeout_s: the longest one remote (fsspec, not local) file may take to read; a
            stalled network read becomes that file's error instead of a hang.
    """

    min_side: int = 16
    max_pixels: int = 50_000_000
    max_file_bytes: int = 200_000_000
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ParameterError(f"min_side must be at least 1 pixel, got {self.min_side}")
        if self.max_file_bytes < 1 or not self.read_timeout_s > 0:
            raise ParameterError(f"max_file_bytes must be at least 1 and read_timeout_s positive, got "
                                 f"{self.max_file_bytes} and {self.read_timeout_s}")
        if self.max_pixels < self.min_side**2:
            raise ParameterError(
                f"max_pixels ({self.max_pixels}) must be at least min_side squared "
                f"({self.min_side**2})"
            )


class ImageReadError(Exception):
    """An image that cannot be used; ``str(error)`` is the reason reported to the user."""


CHANGED_SINCE_INDEXED = (
    "changed since data_prep indexed it: its sha256 no longer matches the image index (truncated, "
    "replaced or still being written); rerun data_prep (`kedro run --pipelines data_prep`) to index it again"
)
_SPECIAL_FILES = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_CHUNK_BYTES = 1 << 20


def _not_a_regular_file(mode: int) -> str:
    """Why a file of this mode is not read, or "" for a regular file."""
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kind = next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "a special file")
    return f"not a regular file: {kind}; only regular files are read (reading it could block or never end)"


def _too_large(size: str, limit: int) -> ImageReadError:
    return ImageReadError(f"too large: {size}, over the limit of {limit:,} bytes (max_file_bytes); "
                          "raise max_file_bytes if the image is genuine")


def _read_local(path: str, max_bytes: int) -> bytes:
    """Stat first (following links: the file a link points to is what counts), open without blocking,
    check the opened file again (it may have been swapped since), then read at most ``max_bytes``."""
    found = os.stat(path)
    reason, size = _not_a_regular_file(found.st_mode), found.st_size
    if reason:
        raise ImageReadError(reason)
    if size > max_bytes:
        raise _too_large(f"{size:,} bytes", max_bytes)
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        reason = _not_a_regular_file(os.fstat(descriptor).st_mode)
        if reason:
            raise ImageReadError(reason)
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(descriptor, min(_CHUNK_BYTES, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(descriptor)
    if total > max_bytes:
        raise _too_large("its size said less, but reading went on past the limit", max_bytes)
    return b"".join(chunks)


def _read_remote(url: str, max_bytes: int) -> bytes:
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    kind = info.get("type", "file")
    if kind == "directory":
        raise ImageReadError("is a directory, not an image file")
    if kind != "file":
        raise ImageReadError(f"not a regular file ({kind}); only regular files are read")
    if (info.get("size") or 0) > max_bytes:
        raise _too_large(f"{info['size']:,} bytes", max_bytes)
    with fs.open(path, "rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large("its size said less, but reading went on past the limit", max_bytes)
    return data


def _within(seconds: float, read: Callable[[], bytes]) -> bytes:
    """``read()`` in a daemon thread, given up after ``seconds``: a stalled read is left behind, not waited on."""
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["data"] = read()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    worker = threading.Thread(target=work, daemon=True, name="image read")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise ImageReadError(f"read timed out after {seconds:g} s (a stalled remote read); "
                             "check the connection or raise read_timeout_s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["data"]


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def read_bytes(path: str, limits: ImageLimits = ImageLimits(), sha256: str | None = None) -> bytes:
    """Read a local path or fsspec URL, turning every file-system failure into a reason.

    Only regular files are opened: pipes, sockets and devices (also behind links) are refused before
    any read, since reading them can block forever or never end. At most ``limits.max_file_bytes`` are
    read; a remote file gets ``limits.read_timeout_s``. With ``sha256``, bytes that no longer hash to
    it (the file changed since it was indexed) are refused too. A path no file system can open (a NUL
    byte, an unknown URL scheme, a scheme whose package or credentials are missing) is one more reason,
    never an exception that stops the run.
    """
    if "\0" in path:
        raise ImageReadError("the path contains a NUL byte, which no file name can hold; fix the path "
                             "(e.g. the CSV row) that lists it")
    try:
        if _is_local(path):
            data = _read_local(path.removeprefix("file://"), limits.max_file_bytes)
        else:
            data = _within(limits.read_timeout_s, lambda: _read_remote(path, limits.max_file_bytes))
    except ImageReadError:
        raise
    except FileNotFoundError as error:
        raise ImageReadError(_not_found(error)) from None
    except IsADirectoryError:
        raise ImageReadError("is a directory, not an image file") from None
    except PermissionError:
        raise ImageReadError("permission denied: the file cannot be read") from None
    except OSError as error:  # symlink loops, I/O errors, remote failures
        raise ImageReadError(f"cannot be read: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 - each remote file system raises its own types
        raise ImageReadError(_unopenable(path, error)) from None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageReadError(CHANGED_SINCE_INDEXED)
    return data


def _not_found(error: FileNotFoundError) -> str:
    """A file that is gone, or (fsspec's HTTP file system says "not found" for both) a server that
    could not be reached or answered with an error other than 404."""
    cause = error.__cause__ or error.__context__
    if cause is None or getattr(cause, "status", None) in (404, 410):
        return "missing file: it no longer exists at this path"
    status = getattr(cause, "status", None)
    if status is not None:
        return f"the server answered HTTP {status} ({getattr(cause, 'message', '')}); check the URL and access rights"
    return f"cannot be reached: {cause}; check the address and that the server is up"


def _unopenable(path: str, error: Exception) -> str:
    """Why no file system could open ``path``: an unknown scheme, a missing package or credentials."""
    scheme = path.split("://", 1)[0] if "://" in path else "file"
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    if isinstance(error, ValueError) and "protocol not known" in first_line.lower():
        return (f"unknown URL scheme '{scheme}://': no installed file system reads it; check the path "
                "(local paths need no scheme)")
    if isinstance(error, ImportError):
        return f"cannot read '{scheme}://' URLs: {first_line} (pip install it, or copy the file locally)"
    return f"cannot be read from '{scheme}://': {type(error).__name__}: {first_line}"
