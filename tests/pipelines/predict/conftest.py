"""Fixtures of the predict tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import make_mixed_folder


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    return make_mixed_folder(tmp_path / "incoming")
