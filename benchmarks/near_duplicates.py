"""Near-duplicate grouping when thousands of images share one perceptual hash: the search before issue 41
against the one now, side by side, each in a fresh process.

Hashes are random 64-bit values, 1 % of them one bit from another, and in the "shared" data sets
``--shared`` of them one and the same hash (a picture copied thousands of times, or thousands of blank
frames). Each arm runs once per round in its own process, which reports its wall seconds, the peak
resident memory it added (VmHWM after the call less VmHWM before it) and its groups; the groups of
both searches must be the same. ``pairs`` calls the search alone; ``group_duplicates`` calls data_prep's
node, which also builds the duplicate report from the pairs.

    python -m benchmarks.near_duplicates                  # 20,000 images (5,000 shared), 100,000 distinct
    python -m benchmarks.near_duplicates --old-shared 3000 --rounds 3

The old search is kept here only as the reference; it builds every pair among the shared copies in a
Python set, so it runs at ``--old-shared`` copies (2,000 by default): at 5,000 it took minutes and GBs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

import numpy as np
import pandas as pd

from benchmarks import harness

MAX_DISTANCE = 2  # data_prep.near_duplicate_max_distance's default


def old_near_duplicate_pairs(hex_hashes: pd.Series, max_distance: int) -> np.ndarray:
    """image_classification.duplicates.near_duplicate_pairs before issue 41 (commit 4d52fb4): every pair."""
    if max_distance < 0 or len(hex_hashes) < 2:
        return np.empty((0, 2), dtype=np.int64)
    bits = np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
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
                close = others[np.bitwise_count(bits[others] ^ bits[first]) <= max_distance]
                found.update((int(first), int(other)) for other in close)
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def make_hashes(images: int, shared: int, seed: int = 0) -> pd.Series:
    """``images`` hex hashes: ``shared`` of them one hash, 1 % one bit from another, the rest random."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**64, size=images, dtype=np.uint64)
    bits[:shared] = bits[0]
    near = images // 100
    bits[shared : shared + near] = bits[images - near :] ^ (np.uint64(1) << rng.integers(0, 64, near).astype(np.uint64))
    return pd.Series([f"{int(value):016x}" for value in rng.permutation(bits)])


def checked_table(hashes: pd.Series) -> pd.DataFrame:
    """data_prep's checked images with these hashes: distinct bytes, labels alternating."""
    labels = pd.array(np.where(np.arange(len(hashes)) % 2, "valid", "invalid"), dtype="string")
    return pd.DataFrame({"path": [f"image_{i}.png" for i in range(len(hashes))], "label": labels, "kind": labels,
                         "sha256": [f"{i:064x}" for i in range(len(hashes))], "phash": hashes,
                         "group": pd.array([None] * len(hashes), dtype="string")})


def groups_digest(groups: np.ndarray) -> str:
    """The partition, whatever the component numbers: each item's smallest fellow member, hashed."""
    smallest = pd.Series(np.arange(len(groups))).groupby(groups).transform("min").to_numpy()
    return hashlib.sha256(smallest.astype(np.int64).tobytes()).hexdigest()[:12]


def measure(images: int, shared: int, search: str, entry: str) -> None:
    """One child process: group the hashes; print seconds, added peak MiB, pairs, groups and their digest."""
    import logging

    from image_classification import duplicates
    from image_classification.pipelines.data_prep import nodes

    logging.disable(logging.WARNING)
    hashes = make_hashes(images, shared)
    table = checked_table(hashes) if entry == "group_duplicates" else None
    find = old_near_duplicate_pairs if search == "old" else duplicates.near_duplicate_pairs
    nodes.near_duplicate_pairs = find  # the node looks the search up in its own module
    before = harness.peak_rss_mib()
    started = time.perf_counter()
    if entry == "pairs":
        pairs = find(hashes, MAX_DISTANCE)
        groups = duplicates.connected_groups(len(hashes), pairs)
        count = len(pairs)
    else:
        grouped, _, report = nodes.group_duplicates(table, pd.DataFrame(columns=nodes.REJECTED_COLUMNS), MAX_DISTANCE)
        groups, count = grouped["split_group"].to_numpy(), len(report)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_mib": harness.peak_rss_mib() - before, "pairs": count,
                      "groups": int(len(set(groups))), "digest": groups_digest(groups)}))


TIMED_OUT = {"seconds": float("nan"), "peak_mib": float("nan"), "pairs": -1, "groups": -1, "digest": "timed out"}


def cases(args: argparse.Namespace) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """(data set, images, shared, searches): the old search only where it cannot run out of memory."""
    return [
        (f"{args.images:,} images, {args.old_shared:,} share one hash", args.images, args.old_shared, ("old", "new")),
        (f"{args.images:,} images, {args.shared:,} share one hash", args.images, args.shared, ("new",)),
        (f"{args.distinct:,} distinct hashes", args.distinct, 0, ("old", "new")),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    harness.child_option(parser, "IMAGES", "SHARED", "SEARCH", "ENTRY")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--shared", type=int, default=5000)
    parser.add_argument("--old-shared", type=int, default=2000, help="shared copies the old search runs at")
    parser.add_argument("--distinct", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one process may take")
    args = parser.parse_args(argv)
    if args.child:
        images, shared, search, entry = args.child
        return measure(int(images), int(shared), search, entry)
    rows = []
    print(f"near-duplicate grouping, max_distance {MAX_DISTANCE}, {args.rounds} round(s), medians "
          f"({harness.cpu_model()}):")
    print(f"{'data set':42s} {'entry':16s} {'search':6s} {'seconds':>8s} {'peak MiB':>9s} {'pairs':>10s} "
          f"{'groups':>7s}")
    for name, images, shared, searches in cases(args):
        for entry in ("pairs", "group_duplicates"):
            found = {search: [harness.in_child("near_duplicates", images, shared, search, entry, timeout=args.timeout)
                             or TIMED_OUT for _ in range(args.rounds)] for search in searches}
            for search, results in found.items():
                seconds = statistics.median(result["seconds"] for result in results)
                peak = statistics.median(result["peak_mib"] for result in results)
                last = results[-1]
                print(f"{name:42s} {entry:16s} {search:6s} {seconds:8.2f} {peak:9.0f} {last['pairs']:10,d} "
                      f"{last['groups']:7,d}" + (" (timed out)" if last is TIMED_OUT else ""))
                rows.append({"arm": f"{name}, {entry}, {search}", "images": images, "shared": shared,
                             "seconds": seconds, "peak_mib": peak, "pairs": last["pairs"], "groups": last["groups"]})
            digests = {results[-1]["digest"] for results in found.values()}
            if len(digests) > 1:
                print(f"  the searches' groups differ: {digests}")
    harness.write_results(args.results_file, "near_duplicates", rows, args)


if __name__ == "__main__":
    main()
