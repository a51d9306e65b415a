"""Old versions of versioned datasets: every run adds one of each (a model, figures, tables), and nothing
removed them, so ``data/`` grew by tens of megabytes a run. :func:`prune` keeps the newest few.

Only local version folders are touched: the folder named after a versioned catalog entry (or every
folder a dataset factory's path matches) holding subfolders named like Kedro's versions
(``2026-12-06T18.39.25.643Z``); anything else there is left alone.
"""

from __future__ import annotations

import glob
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{3}Z$")
_PLACEHOLDER = re.compile(r"\{[^}]*\}")


@dataclass(frozen=True)
class Pruned:
    """One dataset's versions: those kept (newest last) and those removed (or, in a dry run, to remove)."""

    dataset: Path
    kept: list[str]
    removed: list[str]
    bytes_removed: int


def versioned_folders(catalog: dict, project: Path) -> list[Path]:
    """The local folders of every versioned entry in ``catalog`` (a resolved catalog configuration);
    a factory's placeholders (``{name}``) match any one path segment."""
    folders: set[Path] = set()
    for entry in catalog.values():
        if not isinstance(entry, dict) or not entry.get("versioned") or "filepath" not in entry:
            continue
        filepath = str(entry["filepath"])
        if "://" in filepath and not filepath.startswith("file://"):
            continue  # remote storage: its own lifecycle rules apply
        path = filepath.removeprefix("file://")
        path = path if Path(path).is_absolute() else f"{project}/{path}"
        pattern = "*".join(glob.escape(part) for part in _PLACEHOLDER.split(path))
        folders |= {Path(match) for match in glob.glob(pattern) if Path(match).is_dir()}
    return sorted(folders)


def _size(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())


def prune(catalog: dict, project: Path, keep: int, dry_run: bool = False) -> list[Pruned]:
    """Remove all but the ``keep`` newest versions of every versioned dataset (Kedro's version names sort
    by time); with ``dry_run``, only say what would go."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version is what the next stage loads), got {keep}")
    results = []
    for folder in versioned_folders(catalog, project):
        versions = sorted(child.name for child in folder.iterdir() if child.is_dir() and VERSION.match(child.name))
        old = versions[:-keep]
        size = sum(_size(folder / name) for name in old)
        if not dry_run:
            for name in old:
                shutil.rmtree(folder / name)
        results.append(Pruned(folder, versions[-keep:], old, size))
    return results
