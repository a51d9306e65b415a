"""Where the user's images come from: a folder tree, a CSV of labels, or class folders.

Each reader returns the same table of candidate images, one row per file:
``path``, ``label`` ("valid", "invalid" or missing for unseen kinds), ``kind`` (the folder or
CSV value the image came from, or the unseen kind), ``split`` (given by hand or missing) and
``group`` (given by hand or missing). Image files are not opened here; see ``image_files.py`` and ``images.py``.
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable, Iterable

import fsspec
import numpy as np
import pandas as pd

from image_classification.demo import DemoFolder
from image_classification.errors import SourceError
from image_classification.image_files import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["path", "label", "kind", "split", "group"]
# One vocabulary of source kinds for data_prep and predict; predict reads the unlabelled ones.
SOURCE_KINDS = ("demo", "folder_tree", "csv", "class_folders")
UNLABELLED_KINDS = ("demo", "folder_tree", "csv")
# old names that still work, each with a deprecation warning naming its new name
RENAMED_KINDS = {"folder": "folder_tree"}
SPLITS = ("train", "val", "test")
LABELS = ("valid", "invalid")
_LABEL_WORDS = {
    "valid": "valid", "1": "valid", "true": "valid",
    "invalid": "invalid", "0": "invalid", "false": "invalid",
}
# The settings each kind reads besides ``kind``: any other one set would be ignored (a root with the demo kind)
SOURCE_SETTINGS = {"demo": (), "folder_tree": ("root", "zero_shot_root"), "csv": ("csv", "zero_shot_csv", "labels"),
                   "class_folders": ("root", "zero_shot_root", "class_map")}
UNLABELLED_SETTINGS = {"demo": (), "folder_tree": ("root",), "csv": ("csv",)}


def _filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def _full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path other stages can open: plain for local files, protocol-qualified otherwise."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def printable_path(path: str) -> str | None:
    """``path`` as it can be written to a table or a log, or None when its name is not valid UTF-8
    (the file system hands such bytes over as surrogates, which no parquet, JSON or log line holds)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return path


def unnameable(path: str) -> dict:
    """The skipped-file row of a path whose name is not valid UTF-8: shown with its bytes escaped."""
    shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return {"path": shown, "reason": "skipped: its name is not valid UTF-8 text (shown with \\x escapes); "
                                     "rename it to index it"}


def _list_files(root: str, what: str) -> tuple[list[str], list[dict]]:
    """All image files below ``root``, and the other (non-hidden) files found there, each with the
    reason it is skipped."""
    fs, base = _filesystem(root)
    if not fs.isdir(base):
        raise SourceError(f"{what} '{root}' is not a folder; check the path in parameters_data_prep.yml")
    images, others = [], []
    for path in sorted(fs.find(base)):
        name = posixpath.basename(path)
        if name.startswith("."):
            continue  # .DS_Store, editor swap files
        if printable_path(path) is None:
            others.append(unnameable(_full_url(fs, path)))
        elif posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            images.append(_full_url(fs, path))
        else:
            others += _skipped([_full_url(fs, path)])
    return images, others


def _candidates(rows: Iterable[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=CANDIDATE_COLUMNS)
    return frame.astype({c: "string" for c in CANDIDATE_COLUMNS})


def _skipped(paths: Iterable[str]) -> list[dict]:
    return [
        {"path": p, "reason": f"skipped: '{posixpath.splitext(p)[1] or '(no extension)'}' is not an image file type"}
        for p in paths
    ]


def read_folder_tree(root: str, zero_shot_root: str | None) -> tuple[pd.DataFrame, list[dict]]:
    """``<root>/valid/**`` and ``<root>/invalid/**``; unseen kinds in ``<zero_shot_root>/<kind>/**``."""
    rows, skipped = [], []
    for label in ("valid", "invalid"):
        images, others = _list_files(posixpath.join(root.rstrip("/"), label), f"Folder for '{label}' images")
        rows += [{"path": p, "label": label, "kind": label} for p in images]
        skipped += others
    if zero_shot_root:
        unseen, others = _read_kind_folders(zero_shot_root, None)
        rows += unseen
        skipped += others
    return _candidates(rows), skipped


def _subfolders(root: str) -> list[str]:
    fs, base = _filesystem(root)
    if not fs.isdir(base):
        raise SourceError(f"'{root}' is not a folder; check the path in parameters_data_prep.yml")
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(base, detail=False) if fs.isdir(p))


def _read_kind_folders(root: str, kinds: list[str] | None) -> tuple[list[dict], list[dict]]:
    rows, skipped = [], []
    for kind in kinds if kinds is not None else _subfolders(root):
        images, others = _list_files(posixpath.join(root.rstrip("/"), kind), f"Unseen-kind folder '{kind}'")
        rows += [{"path": p, "label": None, "kind": kind} for p in images]
        skipped += others
    return rows, skipped


def _names(value: list | str | None) -> list[str]:
    """A list of folder names, or one string of names separated by spaces or semicolons
    (``kedro run --params`` splits its argument on commas, so lists are awkward to pass there)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [name for name in value.replace(";", " ").split() if name]
    return [str(name) for name in value]


def read_class_folders(root: str, class_map: dict) -> tuple[pd.DataFrame, list[dict]]:
    """``<root>/<class>/**`` with ``class_map`` naming the valid, invalid and unseen classes."""
    valid, invalid = _names(class_map.get("valid")), _names(class_map.get("invalid"))
    unseen = _names(class_map.get("unseen"))
    if not valid or not invalid:
        raise SourceError(
            "data_prep.source.class_map needs at least one folder name under both 'valid' and "
            f"'invalid'; got valid={valid}, invalid={invalid}"
        )
    named = valid + invalid + unseen
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise SourceError(f"class folder(s) {repeated} appear more than once in data_prep.source.class_map")
    present = _subfolders(root)
    missing = [name for name in named if name not in present]
    if missing:
        raise SourceError(
            f"class folder(s) {missing} named in data_prep.source.class_map do not exist under "
            f"'{root}'; the folders there are {present}"
        )
    ignored = [name for name in present if name not in named]
    if ignored:
        logger.warning("Ignoring class folders not named in data_prep.source.class_map: %s", ignored)
    rows, skipped = [], []
    for label, names in (("valid", valid), ("invalid", invalid)):
        for name in names:
            images, others = _list_files(posixpath.join(root.rstrip("/"), name), f"Class folder '{name}'")
            rows += [{"path": p, "label": label, "kind": name} for p in images]
            skipped += others
    unseen_rows, unseen_skipped = _read_kind_folders(root, unseen)
    return _candidates(rows + unseen_rows), skipped + unseen_skipped


def _read_csv_text(url: str) -> pd.DataFrame:
    fs, path = _filesystem(url)
    if fs.exists(path) and not fs.isfile(path):  # a folder, pipe or device: opening a pipe would block
        raise SourceError(f"CSV file '{url}' is not a regular file; check data_prep.source.csv")
    try:
        with fsspec.open(url, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise SourceError(f"CSV file '{url}' does not exist; check data_prep.source.csv") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SourceError(
            f"CSV file '{url}' is not UTF-8 text (byte {error.start} cannot be decoded); "
            "save it as UTF-8 and run again"
        ) from None
    if not text.strip():
        raise SourceError(f"CSV file '{url}' is empty; it needs a header row with at least 'path' and 'label'")
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    return frame


def _resolve(base: str, path: str) -> str:
    """Relative paths resolve against the CSV's folder; absolute paths and URLs stay as given."""
    if "://" in path or posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(base, path)) if "://" not in base else f"{base}/{path}"


def _csv_rows(url: str, required: list[str], optional: list[str]) -> pd.DataFrame:
    frame = _read_csv_text(url)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise SourceError(
            f"CSV file '{url}' has no column {missing}; its columns are {list(frame.columns)}. "
            f"It needs {required} (optional: {optional})"
        )
    if frame.empty:
        raise SourceError(f"CSV file '{url}' has a header but no rows")
    frame = frame[[c for c in required + optional if c in frame.columns]].copy()
    frame["line"] = frame.index + 2  # header is line 1
    blank = frame[frame["path"].str.strip() == ""]
    if not blank.empty:
        raise SourceError(f"CSV file '{url}' line {int(blank['line'].iloc[0])}: the path is empty")
    fs, csv_path = _filesystem(url)
    base = posixpath.dirname(_full_url(fs, csv_path))
    frame["path"] = [_resolve(base, p.strip()) for p in frame["path"]]
    repeated = frame[frame.duplicated("path", keep=False)]
    if not repeated.empty:
        first = repeated["path"].iloc[0]
        lines = repeated.loc[repeated["path"] == first, "line"].tolist()
        raise SourceError(
            f"CSV file '{url}' lists '{first}' more than once (lines {_some(lines)}); "
            f"{repeated['path'].nunique()} path(s) are repeated. Keep one row per image"
        )
    return frame


def _some(lines: list[int], shown: int = 5) -> str:
    """Line numbers for a message: the first few, then how many more (10,000 would fill a screen)."""
    text = ", ".join(str(line) for line in lines[:shown])
    return text + (f" and {len(lines) - shown:,} more" if len(lines) > shown else "")


def label_words(labels: dict | None = None) -> dict[str, str]:
    """Each word a CSV's label column may hold (lower case), mapped to valid or invalid: the built-in
    valid/invalid, 1/0, true/false, and ``data_prep.source.labels`` (any words, e.g. ``good: valid``),
    so that a CSV labelled in its own words is read as it is, not rewritten by hand."""
    if labels is not None and not isinstance(labels, dict):
        raise SourceError(f"data_prep.source.labels is {labels!r}; it maps words to valid or invalid, "
                          "e.g. {good: valid, bad: invalid}")
    words = dict(_LABEL_WORDS)
    for word, label in (labels or {}).items():
        if isinstance(word, bool):  # YAML reads unquoted yes/no/on/off/true/false as booleans
            raise SourceError(f"data_prep.source.labels has the key {word}, not a word: quote it ('yes': valid)")
        if str(label).strip().lower() not in LABELS:
            raise SourceError(f"data_prep.source.labels.{word} is {label!r}; each word must map to valid or invalid")
        words[str(word).strip().lower()] = str(label).strip().lower()
    return words


def read_labels_csv(url: str, zero_shot_csv: str | None = None,
                    labels: dict | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """A CSV with ``path`` and ``label`` (a word of :func:`label_words`, given ``labels``), optional
    ``split``, ``group`` and ``class`` (a finer label, e.g. the kind of defect or of vehicle, which
    zero_shot's class-conditional detectors use; an empty cell falls back to the label); unseen
    kinds from a second CSV with ``path`` and ``kind``."""
    frame = _csv_rows(url, ["path", "label"], ["split", "group", "class"])
    mapped = frame["label"].str.strip().str.lower().map(label_words(labels))
    unknown = frame[mapped.isna()]
    if not unknown.empty:
        raise SourceError(
            f"CSV file '{url}' line {int(unknown['line'].iloc[0])}: label "
            f"'{unknown['label'].iloc[0]}' is not one of valid/invalid, 1/0, true/false or a word of "
            f"data_prep.source.labels ({len(unknown)} row(s) have unknown labels); map such words there, "
            "e.g. data_prep.source.labels.good=valid"
        )
    frame["kind"] = mapped
    if "class" in frame.columns:
        classes = frame.pop("class").fillna("").astype(str).str.strip()
        frame["kind"] = classes.where(classes != "", mapped)
    frame["label"] = mapped
    if "split" in frame.columns:
        splits = frame["split"].str.strip().str.lower().replace("", None)
        bad = frame[splits.notna() & ~splits.isin(SPLITS)]
        if not bad.empty:
            raise SourceError(
                f"CSV file '{url}' line {int(bad['line'].iloc[0])}: split '{bad['split'].iloc[0]}' "
                f"is not one of {list(SPLITS)} (leave it empty to let data_prep choose)"
            )
        frame["split"] = splits
    if "group" in frame.columns:
        frame["group"] = frame["group"].str.strip().replace("", None)
    rows = frame.drop(columns="line").to_dict("records")
    if zero_shot_csv:
        unseen = _csv_rows(zero_shot_csv, ["path", "kind"], [])
        rows += [{"path": r["path"], "label": None, "kind": r["kind"]} for r in unseen.to_dict("records")]
    return _candidates(rows), []


def fine_classes(image_index: pd.DataFrame, rows: np.ndarray) -> tuple[list[str], np.ndarray | None]:
    """The finer classes of the indexed images at ``rows`` (their ``kind``: the class folder, or a
    CSV's ``class``), sorted, and each image's code among them; ``([], None)`` when there are no
    more classes than labels, or no ``kind`` column (an index made by hand): nothing finer to learn."""
    if "kind" not in image_index.columns:
        return [], None
    chosen = image_index.iloc[rows]
    names, codes = np.unique(chosen["kind"].to_numpy(dtype=str), return_inverse=True)
    if len(names) <= chosen["label"].nunique():
        return [], None
    return names.tolist(), codes


def _demo_folder(demo_root: str | Callable[[], str]) -> str:
    """The demo's folder; a callable (the ``demo_images`` dataset) builds the demo on first use."""
    return demo_root() if callable(demo_root) else demo_root


_LOCATIONS = ("root", "zero_shot_root", "csv", "zero_shot_csv")


def _build_demo_if_named(source: dict, demo_root: str | Callable[[], str]) -> None:
    """Build the demo first when a source's path lies inside the demo's folder: the cifar10_dev
    environment reads the demo's far unseen kinds from ``data/01_raw/demo/unseen``, which a fresh
    clone does not have yet."""
    if isinstance(demo_root, DemoFolder) and any(
        source.get(key) and demo_root.holds(str(source[key])) for key in _LOCATIONS
    ):
        demo_root()


def read_source(source: dict, demo_root: str | Callable[[], str]) -> tuple[pd.DataFrame, list[dict]]:
    """Dispatch on ``source['kind']``: demo, folder_tree, csv or class_folders. The demo is only
    built when ``kind`` is demo."""
    kind = source.get("kind")
    _build_demo_if_named(source, demo_root)
    if kind == "demo":
        root = _demo_folder(demo_root)
        return read_folder_tree(posixpath.join(root, "labelled"), posixpath.join(root, "unseen"))
    if kind == "folder_tree":
        return read_folder_tree(_required(source, "root"), source.get("zero_shot_root"))
    if kind == "csv":
        return read_labels_csv(_required(source, "csv"), source.get("zero_shot_csv"), source.get("labels"))
    if kind == "class_folders":
        candidates, skipped = read_class_folders(_required(source, "root"), source.get("class_map") or {})
        if source.get("zero_shot_root"):  # more unseen kinds from elsewhere, e.g. far-away images
            extra, extra_skipped = _read_kind_folders(source["zero_shot_root"], None)
            candidates = pd.concat([candidates, _candidates(extra)], ignore_index=True)
            skipped += extra_skipped
        return candidates, skipped
    raise SourceError(f"data_prep.source.kind is '{kind}'; use one of {', '.join(SOURCE_KINDS)}")


def current_kind(kind: str | None, parameter: str) -> str | None:
    """``kind`` in today's vocabulary: an old name is logged as deprecated, naming the new one."""
    if kind in RENAMED_KINDS:
        logger.warning("%s: '%s' is deprecated, use '%s' (the same source); the old name will stop working",
                       parameter, kind, RENAMED_KINDS[kind])
        return RENAMED_KINDS[kind]
    return kind


def read_unlabelled(source: dict, demo_root: str | Callable[[], str]) -> tuple[list[str], list[dict]]:
    """Images to score (predict): every file below a folder (``kind: folder_tree`` with ``root``,
    at any depth, or ``demo``) or the ``path`` column of a CSV (``kind: csv`` with ``csv``).

    Returns the image paths and a folder's other files, each with the reason it is skipped.
    """
    kind = current_kind(source.get("kind"), "predict.source.kind")
    _build_demo_if_named(source, demo_root)
    location = _demo_folder(demo_root) if kind == "demo" else source.get("csv" if kind == "csv" else "root")
    if kind not in UNLABELLED_KINDS or not location:
        raise SourceError(
            f"predict.source needs kind 'folder_tree' with a root, 'csv' with a csv, or 'demo'; got {source}"
        )
    fs, path = _filesystem(str(location))
    if kind == "csv":
        if not fs.isfile(path):
            raise SourceError(f"predict.source.csv '{location}' is not a file; check the path in parameters_predict.yml")
        return _csv_rows(str(location), ["path"], [])["path"].tolist(), []
    if not fs.isdir(path):
        raise SourceError(f"predict.source.root '{location}' is not a folder; check the path in parameters_predict.yml")
    return _list_files(str(location), "predict.source.root")


def _required(source: dict, key: str) -> str:
    value = source.get(key)
    if not value:
        raise SourceError(
            f"data_prep.source.{key} must be set when data_prep.source.kind is '{source.get('kind')}'"
        )
    return str(value)
