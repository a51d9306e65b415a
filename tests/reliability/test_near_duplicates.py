"""Near-duplicate grouping gives the groups all pairs would give, and stays near linear when thousands of
images share one perceptual hash (issue 41: 5,001 copies of one image used to take minutes and GBs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components

from image_classification import duplicates
from image_classification.duplicates import connected_groups, near_duplicate_pairs, near_hash_pairs


def hashes_with_copies(seed: int, centres: int = 60) -> np.ndarray:
    """Random 64-bit hashes, each centre with copies and with variants a few bits away, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=centres, dtype=np.uint64)
    flips = [np.uint64(1) << rng.integers(0, 64, size=centres).astype(np.uint64) for _ in range(3)]
    variants = [base ^ flips[0], base ^ flips[0] ^ flips[1], base ^ flips[0] ^ flips[1] ^ flips[2]]
    copies = np.repeat(base[:10], rng.integers(2, 30, size=10))
    loners = rng.integers(0, 2**64, size=100, dtype=np.uint64)
    return rng.permutation(np.concatenate([base, *variants, copies, variants[1][:5], loners]))


def as_hex(bits: np.ndarray) -> pd.Series:
    return pd.Series([f"{int(value):016x}" for value in bits])


def same_partition(left: np.ndarray, right: np.ndarray) -> bool:
    """Two component labellings put the same items together (whatever the numbers)."""
    return len(set(zip(left, right))) == len(set(left)) == len(set(right))


def brute_force_groups(bits: np.ndarray, max_distance: int) -> np.ndarray:
    close = np.bitwise_count(bits[:, None] ^ bits[None, :]) <= max_distance
    return connected_components(close, directed=False)[1]


@pytest.mark.parametrize("max_distance", [0, 1, 2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_near_duplicate_links_give_the_groups_of_all_pairs(seed, max_distance):
    bits = hashes_with_copies(seed)
    pairs = near_duplicate_pairs(as_hex(bits), max_distance)
    assert (pairs[:, 0] < pairs[:, 1]).all()
    assert len(np.unique(pairs, axis=0)) == len(pairs)
    groups = connected_groups(len(bits), pairs)
    assert same_partition(groups, brute_force_groups(bits, max_distance))
    assert len(set(groups)) < len(bits)  # the data have duplicates to find


@pytest.mark.parametrize("max_distance", [1, 2, 4])
def test_the_search_over_distinct_hashes_finds_every_close_pair_once(max_distance, monkeypatch):
    """Large buckets (many hashes sharing a block) are compared in chunks; small ones together."""
    monkeypatch.setattr(duplicates, "COMPARISONS_PER_CHUNK", 1000)
    rng = np.random.default_rng(max_distance)
    crowded = (rng.integers(0, 2**12, size=300, dtype=np.uint64) | np.uint64(0xABCDE << 40))
    bits = np.unique(np.concatenate([hashes_with_copies(5), crowded]))
    found = near_hash_pairs(bits, max_distance)
    close = np.bitwise_count(bits[:, None] ^ bits[None, :]) <= max_distance
    expected = np.argwhere(np.triu(close, k=1))
    assert len(found) == len(expected) > 0
    assert np.array_equal(found[np.lexsort((found[:, 1], found[:, 0]))], expected)


def test_five_thousand_copies_of_one_hash_group_at_once(tally):
    rng = np.random.default_rng(41)
    shared = rng.integers(0, 2**64, dtype=np.uint64)
    others = rng.integers(0, 2**64, size=5000, dtype=np.uint64)
    bits = rng.permutation(np.concatenate([np.full(5000, shared), others, others[:20] ^ np.uint64(3)]))
    pairs = near_duplicate_pairs(as_hex(bits), 2)
    groups = connected_groups(len(bits), pairs)
    copies = groups[bits == shared]
    assert (copies == copies[0]).all() and (groups == copies[0]).sum() == 5000
    assert len(pairs) < 6000  # links, not the 12.5 million pairs among the copies
    assert len(set(groups)) == len(np.unique(bits)) - 20  # each of the 20 variants joins its original
    tally.add("near-duplicate groups checked at 5,000 shared hashes")


def test_group_duplicates_reports_links_and_the_label_conflict_among_5000_copies():
    from image_classification.pipelines.data_prep.nodes import REJECTED_COLUMNS, group_duplicates

    count = 5000
    labels = ["valid"] * count
    labels[2500] = "invalid"
    checked = pd.DataFrame({
        "path": [f"copy_{i}.png" for i in range(count)] + ["other.png"],
        "label": pd.array(labels + ["valid"], dtype="string"),
        "kind": pd.array(labels + ["valid"], dtype="string"),
        "sha256": [f"{i:064x}" for i in range(count + 1)],
        "phash": ["00ff00ff00ff00ff"] * count + ["ff00ff00ff00ff00"],
        "group": pd.array([None] * (count + 1), dtype="string"),
    })
    grouped, rejected, report = group_duplicates(checked, pd.DataFrame(columns=REJECTED_COLUMNS), max_distance=2)
    assert grouped["split_group"].iloc[:count].nunique() == 1 != grouped["split_group"].nunique()
    assert len(report) == count - 1 and (report["type"] == "near").all()
    assert report["labels_differ"].sum() == 2  # the odd label, linked to the copies before and after it
    assert rejected.empty
