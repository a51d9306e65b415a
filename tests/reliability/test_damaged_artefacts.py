"""A damaged artefact in a whole run: issue 41's case 4, a feature cache whose tensor bytes were overwritten
in place (same size, same header), ran score and evaluate with rc 0 and a test AUROC of 0.71 instead of
1.00. Now ``kedro run`` stops with one ``Error:`` line naming the file and the pipeline that rewrites it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_session
from .test_full_disks_and_concurrent_runs import error_lines, kedro_run, prepared  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


def overwrite_inside(path: Path, tensor: str) -> None:
    """Overwrite 16 bytes in the middle of ``tensor``'s data with other values (each byte inverted; many
    features are exact zeros, so writing zeros might change nothing), in place: the size and header stay."""
    raw = bytearray(path.read_bytes())
    length = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + length])[tensor]["data_offsets"]
    middle = 8 + length + (begin + end) // 2
    raw[middle:middle + 16] = bytes(byte ^ 0xFF for byte in raw[middle:middle + 16])
    path.write_bytes(bytes(raw))


def test_a_feature_cache_overwritten_in_place_stops_score_with_one_error_line(prepared, tally):  # noqa: F811
    run_session(prepared, ["train"])
    cache = prepared / "data" / "04_feature" / "backbone_features.safetensors"
    size = cache.stat().st_size
    overwrite_inside(cache, "head_input")
    assert cache.stat().st_size == size
    child = kedro_run(prepared, "score,evaluate")
    assert child.returncode == 1, child.stderr[-3000:]
    lines = error_lines(child)
    assert len(lines) == 1, child.stderr[-3000:]
    assert str(cache) in lines[0] and "is damaged" in lines[0] and "tensor 'head_input'" in lines[0]
    assert "`kedro run --pipelines train` to write backbone_features again" in lines[0]
    assert "Traceback" not in child.stderr
    assert not (prepared / "data" / "07_model_output" / "scored_index.safetensors").exists()  # nothing scored
    tally.add("damaged feature caches refused in a whole run", 1)
