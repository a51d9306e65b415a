"""Exact and near-duplicate images, found from content and perceptual hashes.

Duplicates must land in the same split, or the test set measures memory instead of skill.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _hash_bits(hex_hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)


COMPARISONS_PER_CHUNK = 1 << 22
"""Hash pairs compared at once inside one large bucket: bounds the search's memory (tens of MB)."""

SMALL_BUCKET = 32
"""Buckets up to this size are searched together, one offset at a time; larger ones in chunks."""


def near_duplicate_pairs(hex_hashes: pd.Series, max_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, that link every image to those whose 64-bit hash differs in at most
    ``max_distance`` bits: the links give the same connected groups as all such pairs, not every pair.

    Images with the same hash are chained (each to the next), so 5,000 copies of one picture cost
    4,999 links instead of 12.5 million pairs; the near search then runs over the distinct hashes
    only, and links the first image of each close pair of hashes. Why: docs/decisions/0034-near-duplicates-and-16-bit.md.
    """
    if max_distance < 0 or len(hex_hashes) < 2:
        return np.empty((0, 2), dtype=np.int64)
    distinct, first, inverse = np.unique(_hash_bits(hex_hashes), return_index=True, return_inverse=True)
    close = near_hash_pairs(distinct, max_distance) if max_distance > 0 else np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate([_chains(inverse.ravel()), np.sort(first[close], axis=1)])
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _chains(keys: np.ndarray) -> np.ndarray:
    """Pairs linking each position to the next position with the same key."""
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    return np.column_stack([order[:-1][same], order[1:][same]]).astype(np.int64)


def near_hash_pairs(bits: np.ndarray, max_distance: int) -> np.ndarray:
    """Every pair (i, j), i < j, of distinct 64-bit hashes within ``max_distance`` bits, each once.

    Pigeonhole search: cut each hash into ``max_distance + 1`` blocks; two hashes this close agree
    exactly on at least one block, so only hashes sharing a block are compared, and a pair is kept
    in the first block they share only.
    """
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    masks = [np.uint64(((1 << (high - low)) - 1) << low) for low, high in zip(edges[:-1], edges[1:])]
    found = [np.empty((0, 2), dtype=np.int64)]
    for block, mask in enumerate(masks):
        order, starts, sizes = _buckets(bits & mask)
        for pairs in _bucket_candidates(bits, order, starts, sizes, max_distance):
            agree_earlier = np.zeros(len(pairs), dtype=bool)
            for earlier in masks[:block]:
                agree_earlier |= ((bits[pairs[:, 0]] ^ bits[pairs[:, 1]]) & earlier) == 0
            found.append(pairs[~agree_earlier])
    pairs = np.concatenate(found)
    return np.sort(pairs, axis=1)


def _buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions sorted by key, and where each run of equal keys starts and how long it is."""
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.r_[True, keys[order[1:]] != keys[order[:-1]]])
    return order, starts, np.diff(np.r_[starts, len(keys)])


def _bucket_candidates(bits, order, starts, sizes, max_distance):
    """Close pairs within each bucket: small buckets together, one offset at a time; large ones in chunks."""
    small = (sizes > 1) & (sizes <= SMALL_BUCKET)
    if small.any():
        bucket = np.repeat(np.arange(len(sizes)), sizes)
        member = order[np.repeat(small, sizes)]
        bucket = bucket[np.repeat(small, sizes)]
        for offset in range(1, int(sizes[small].max())):
            same = bucket[offset:] == bucket[:-offset]
            pairs = np.column_stack([member[:-offset][same], member[offset:][same]])
            yield pairs[np.bitwise_count(bits[pairs[:, 0]] ^ bits[pairs[:, 1]]) <= max_distance]
    for start, size in zip(starts[sizes > SMALL_BUCKET], sizes[sizes > SMALL_BUCKET]):
        yield from _large_bucket_pairs(bits, order[start : start + size], max_distance)


def _large_bucket_pairs(bits: np.ndarray, members: np.ndarray, max_distance: int):
    """Close pairs among one bucket's members, a block of rows against all later members at a time."""
    rows = max(1, COMPARISONS_PER_CHUNK // len(members))
    for top in range(0, len(members) - 1, rows):
        left, right = members[top : top + rows], members[top + 1 :]
        close = np.bitwise_count(bits[left][:, None] ^ bits[right][None, :]) <= max_distance
        close &= np.arange(len(right))[None, :] >= np.arange(len(left))[:, None]  # only later members
        row, column = np.nonzero(close)
        yield np.column_stack([left[row], right[column]])


def pairs_sharing(values: pd.Series) -> np.ndarray:
    """Index pairs linking each row to the next row with the same (non-missing) value."""
    positions = pd.Series(np.arange(len(values)), index=values.index)
    present = values.notna().to_numpy()
    chains = []
    for members in positions[present].groupby(values[present].to_numpy()).agg(list):
        chains += list(zip(members[:-1], members[1:]))
    return np.array(chains, dtype=np.int64).reshape(-1, 2)


def connected_groups(count: int, *pair_sets: np.ndarray) -> np.ndarray:
    """Component number of each of ``count`` items, linking every given pair."""
    pairs = np.concatenate([p for p in pair_sets if len(p)] or [np.empty((0, 2), dtype=np.int64)])
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(count, count)
    )
    return connected_components(graph, directed=False)[1]
