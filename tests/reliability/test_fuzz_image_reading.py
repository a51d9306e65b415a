"""Fuzz the image-reading path for a bounded time: damaged files of every format go through
data_prep's checker and the model's reader; each is either read or skipped with a reason, and
nothing else may happen (``test_soak.py`` runs the same check for longer)."""

from __future__ import annotations

import warnings

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzzing import MUTATIONS, apply_mutation, check_one, seed_files

SEEDS = seed_files()

mutations = st.lists(
    st.tuples(st.sampled_from(MUTATIONS), st.floats(0, 1, exclude_max=True), st.binary(max_size=64),
              st.integers(1, 64)),
    min_size=1, max_size=4,
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(SEEDS)), damages=mutations)
def test_a_damaged_image_is_read_or_skipped_with_a_reason_never_anything_else(tmp_path_factory, tally, name, damages):
    data = SEEDS[name]
    for damage in damages:
        data = apply_mutation(data, *damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF; the outcome is what counts
        status, detail = check_one(tmp_path_factory.getbasetemp() / "fuzzed.bin", data)
    tally.add("fuzz iterations (hypothesis)", 1)
    tally.add(f"fuzz outcome: {status}", 1)
    assert status != "crash", f"{name} after {damages}: {detail}"


def test_every_seed_file_is_read_except_the_bomb(tmp_path, tally):
    """The fuzzers start from files that are themselves fine (but one)."""
    outcomes = {name: check_one(tmp_path / name, data) for name, data in SEEDS.items()}
    assert {name for name, (status, _) in outcomes.items() if status != "read"} == {"bomb.png"}
    assert "decompression bomb" in outcomes["bomb.png"][1]
