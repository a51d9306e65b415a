"""Fuzz what lists and opens images, beside what decodes them (``test_fuzz_image_reading.py``): file
names of any bytes a file system allows (invalid UTF-8 included) in a folder tree, and CSV rows with any
URL scheme, NUL bytes and odd characters. Each item is listed, skipped with a reason or refused with a
reason; nothing else may happen, and every table the run writes can hold what was listed."""

from __future__ import annotations

import os
from pathlib import Path

import fsspec
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from image_classification.image_files import ImageLimits, ImageReadError, read_bytes
from image_classification.sources import SourceError, read_labels_csv, read_source, read_unlabelled

from ..conftest import noise_image, png_bytes

GOOD_PNG = png_bytes(noise_image(3, (24, 24)))


@pytest.fixture(autouse=True, scope="module")
def _forget_remote_file_systems():
    """fsspec caches each file system it makes: one made here without credentials must not serve later tests."""
    yield
    for protocol in ("s3", "gs", "http", "https"):
        try:
            fsspec.get_filesystem_class(protocol).clear_instance_cache()
        except (ImportError, ValueError):
            pass
names = st.tuples(
    st.binary(min_size=1, max_size=40).filter(lambda raw: b"/" not in raw and b"\0" not in raw
                                              and not raw.startswith(b".")),
    st.sampled_from([b".png", b".PNG", b".jpg", b".txt", b""]),
).map(lambda parts: parts[0] + parts[1])
FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                         HealthCheck.function_scoped_fixture])


def _write(folder: Path, raw_names: list[bytes]) -> list[str]:
    """Each name once under ``folder`` (as the file system hands it back: bytes that are not UTF-8 as
    surrogates), holding a good PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for raw in dict.fromkeys(raw_names):
        path = os.path.join(os.fsencode(folder), raw)
        with open(path, "wb") as stream:
            stream.write(GOOD_PNG)
        written.append(os.fsdecode(path))
    return written


def _tables_hold(frame: pd.DataFrame, tmp: Path) -> None:
    """What data_prep and predict write of the listing: parquet and JSON."""
    frame.to_parquet(tmp / "listing.parquet")
    frame.to_json(tmp / "listing.json")


@FUZZ
@given(valid=st.lists(names, min_size=1, max_size=6), invalid=st.lists(names, min_size=1, max_size=6))
def test_any_file_name_is_indexed_or_skipped_with_a_reason_never_a_traceback(tmp_path_factory, tally, valid, invalid):
    root = tmp_path_factory.mktemp("names")
    written = (_write(root / "valid", valid + [b"anchor_valid.png"])
               + _write(root / "invalid", invalid + [b"anchor_invalid.png"]))
    candidates, skipped = read_source({"kind": "folder_tree", "root": str(root)}, "/unused")
    listed, unlisted = set(candidates["path"]), {row["path"] for row in skipped}
    for path in written:
        printable = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        is_image = os.path.splitext(path)[1].lower() in (".png", ".jpg")
        if printable == path and is_image:
            assert path in listed, path
        else:
            assert printable in unlisted and path not in listed, path
    assert len(listed) + len(unlisted) == len(written)
    images, others = read_unlabelled({"kind": "folder_tree", "root": str(root)}, "/unused")
    assert set(images) == listed and {row["path"] for row in others} == unlisted
    tables = tmp_path_factory.mktemp("tables")
    _tables_hold(candidates, tables)
    _tables_hold(pd.DataFrame(skipped, columns=["path", "reason"]), tables)
    tally.add("fuzz iterations (file names)", 1)


schemes = st.one_of(st.sampled_from(sorted(fsspec.available_protocols())),
                    st.from_regex(r"[a-z][a-z0-9+.\-]{0,10}", fullmatch=True))
rest = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\""), max_size=30)


@FUZZ
@given(scheme=schemes, path=rest, nul=st.booleans())
def test_any_url_is_read_or_refused_with_a_reason_never_anything_else(tally, scheme, path, nul):
    """55 file systems fsspec knows and random schemes: no credentials, packages or network here, so
    each is refused with a reason (within the read timeout), never with another exception."""
    url = f"{scheme}://{path}" + ("\0.png" if nul else ".png")
    try:
        data = read_bytes(url, ImageLimits(read_timeout_s=3))
    except ImageReadError as error:
        assert str(error), url
        if nul:
            assert "NUL byte" in str(error)
    else:
        assert isinstance(data, bytes)  # memory:// and the like may hold a file
    tally.add("fuzz iterations (URLs)", 1)


@FUZZ
@given(rows=st.lists(st.tuples(schemes, rest), min_size=1, max_size=5))
def test_a_csv_of_any_urls_is_listed_or_refused_whole_with_one_message(tmp_path_factory, tally, rows):
    """A CSV's rows are only listed here (their bytes are read by the check that follows): any path is
    either a candidate, or the table is refused with a SourceError naming the line."""
    assume(all(path.strip() for _, path in rows))
    folder = tmp_path_factory.mktemp("csv")
    table = folder / "labels.csv"
    lines = [f"\"{scheme}://{path}\",valid" for scheme, path in rows] + [f"{folder}/good.png,invalid"]
    table.write_text("path,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    try:
        candidates, _ = read_labels_csv(str(table))
    except SourceError as error:
        assert "line" in str(error) or "more than once" in str(error), str(error)
    else:
        _tables_hold(candidates, folder)
    tally.add("fuzz iterations (CSV rows)", 1)
