"""Fuzz the feature cache's bytes: every byte of its header flipped in turn, and random flips anywhere;
each damaged file either loads to exactly what was saved or is refused with a :class:`DataError`, read
whole or mapped. Never different values without a word, never another exception."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_classification.artefacts import FeatureCache
from image_classification.datasets import SafetensorsDataset

from .fuzzing import check_artefact


def small_cache() -> FeatureCache:
    generator = torch.Generator().manual_seed(0)
    return FeatureCache.of(head_input=torch.randn(3, 8, 4, 4, generator=generator).half(),
                           pooled=torch.randn(3, 8, generator=generator).half(),
                           patches=torch.randn(3, 4, 8, generator=generator).half(),
                           backbone="efficientnet_lite0", weights="imagenet", head_input_mode="pooled",
                           paths=["/a.png", "/b.png", "/c.png"], sha256=["0" * 64, "1" * 64, "2" * 64],
                           errors=["", "", "truncated"], backbone_sha256="3" * 64, input_size=224)


CACHE = small_cache()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz_artefacts") / "backbone_features.safetensors"
    SafetensorsDataset(filepath=str(path)).save(CACHE.to_payload())
    return path.read_bytes()


def flipped(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data)
    for at, mask in flips:
        damaged[at % len(damaged)] ^= mask
    return bytes(damaged)


@pytest.mark.parametrize("mapped", [False, True], ids=["read", "mmap"])
def test_every_header_byte_flipped_is_refused_or_changes_nothing(saved, tmp_path, tally, mapped):
    header_end = 8 + int.from_bytes(saved[:8], "little")
    outcomes = io.StringIO()
    for at in range(header_end):
        for mask in (0x01, 0x20, 0x80):
            status, detail = check_artefact(tmp_path / "cache.safetensors", flipped(saved, [(at, mask)]), CACHE,
                                            mapped)
            tally.add(f"artefact header flips: {status}")
            if status == "crash":
                outcomes.write(f"byte {at} ^ {mask:#x}: {detail}\n")
    assert not outcomes.getvalue(), outcomes.getvalue()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=4),
       mapped=st.booleans())
def test_random_byte_flips_anywhere_are_refused_or_change_nothing(saved, tmp_path_factory, tally, flips, mapped):
    status, detail = check_artefact(tmp_path_factory.getbasetemp() / "fuzzed.safetensors", flipped(saved, flips),
                                    CACHE, mapped)
    tally.add(f"artefact random flips: {status}")
    assert status != "crash", f"{flips} ({'mapped' if mapped else 'read'}): {detail}"
