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


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def near_duplicate_pairs(hex_hashes: pd.Series, max_distance: int) -> np.ndarray:
    """Index pairs (i, j), i < j, whose 64-bit hashes differ in at most ``max_distance`` bits.

    Pigeonhole search: cut each hash into ``max_distance + 1`` blocks; two hashes this close
    agree exactly on at least one block, so only hashes sharing a block are compared. This keeps
    the search near linear for hundreds of thousands of images instead of all pairs.
    """
    if max_distance < 0 or len(hex_hashes) < 2:
        return np.empty((0, 2), dtype=np.int64)
    bits = _hash_bits(hex_hashes)
    blocks = max_distance + 1
    edges = np.linspace(0, 64, blocks + 1).astype(int)
    found: set[tuple[int, int]] = set()
    for low, high in zip(edges[:-1], edges[1:]):
        mask = np.uint64(((1 << (high - low)) - 1) << low)
        keys = pd.Series(bits & mask)
        for members in keys.groupby(keys).indices.values():
            if len(members) < 2:
                continue
            members = np.sort(members)
            for position, first in enumerate(members[:-1]):
                others = members[position + 1 :]
                close = others[_popcount(bits[others] ^ bits[first]) <= max_distance]
                found.update((int(first), int(other)) for other in close)
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


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
