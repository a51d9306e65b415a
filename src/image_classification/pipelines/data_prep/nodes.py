"""Nodes of the data_prep pipeline: list, check, de-duplicate and split the user's images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import pandas as pd

from image_classification.distributed import DaskSettings, dask_map
from image_classification.duplicates import (
    connected_groups,
    near_duplicate_pairs,
    pairs_sharing,
)
from image_classification.images import inspect_images
from image_classification.image_files import ImageLimits
from image_classification.parameters.data_prep import (
    SplitFractions,
    validated_fractions,
)
from image_classification.sources import SPLITS, SourceError, read_source

logger = logging.getLogger(__name__)

REJECTED_COLUMNS = ["path", "label", "kind", "reason"]


def list_image_candidates(source: dict, demo_images: str | Callable[[], str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the configured source into candidate images and files skipped while listing."""
    candidates, skipped = read_source(source, demo_images)
    if candidates["label"].notna().sum() == 0:
        raise SourceError(f"no labelled images were found in the source {source}")
    skipped_frame = pd.DataFrame(skipped, columns=["path", "reason"]).reindex(columns=REJECTED_COLUMNS)
    logger.info(
        "Found %d labelled and %d unseen-kind images (%d other files skipped)",
        candidates["label"].notna().sum(), candidates["label"].isna().sum(), len(skipped_frame),
    )
    return candidates, skipped_frame


def check_images(
    candidates: pd.DataFrame, skipped: pd.DataFrame, checks: dict, dask: dict | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every candidate once (on the Dask cluster ``runtime.dask`` names, if any); keep the
    readable ones and list the rest with a reason.

    ``dask`` is that block as ``params:runtime.dask`` gives it (or a ``DaskSettings``), not typed here:
    Kedro cannot type a block and one of its keys at once, and the ``runtime`` block is typed as a
    whole (a run with train, score or predict checks it before any node; otherwise it is checked here)."""
    limits = ImageLimits(min_side=int(checks["min_side"]), max_pixels=int(checks["max_pixels"]),
                         max_file_bytes=int(checks.get("max_file_bytes", ImageLimits.max_file_bytes)),
                         read_timeout_s=float(checks.get("read_timeout_s", ImageLimits.read_timeout_s)))
    report = _inspect(candidates["path"].tolist(), limits, int(checks["workers"]), DaskSettings.from_params(dask))
    merged = candidates.reset_index(drop=True).join(report.drop(columns="path"))
    bad = merged.loc[~merged["ok"], REJECTED_COLUMNS]
    for row in bad.head(20).itertuples():
        logger.warning("Skipping %s: %s", row.path, row.reason)
    if len(bad) > 20:
        logger.warning("... and %d more unreadable images (see rejected_images)", len(bad) - 20)
    rejected = pd.concat([skipped.astype(bad.dtypes.to_dict()), bad], ignore_index=True)
    checked = merged.loc[merged["ok"]].drop(columns=["ok", "reason"]).reset_index(drop=True)
    return checked, rejected.astype("string")


def _inspect(paths: list[str], limits: ImageLimits, threads: int, dask: DaskSettings) -> pd.DataFrame:
    """inspect_images over all paths, in this process or in partitions on Dask (rows in the paths' order)."""
    if not (dask.enabled and paths):
        return inspect_images(paths, limits, workers=threads)
    with dask_map(dask, "Checking images") as cluster:
        parts = cluster.in_order(inspect_images, paths, limits, dask.threads_per_worker, 256, False)
    return pd.concat(parts, ignore_index=True)


def _conflicting_exact_duplicates(checked: pd.DataFrame) -> pd.Series:
    """Rows whose exact bytes also appear with another label (or as both labelled and unseen)."""
    roles = checked["label"].fillna("unseen:" + checked["kind"])
    return checked.groupby("sha256")["sha256"].transform("size").gt(1) & roles.groupby(
        checked["sha256"]
    ).transform("nunique").gt(1)


def group_duplicates(
    checked: pd.DataFrame, rejected: pd.DataFrame, max_distance: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Join exact duplicates, near-duplicates and user groups into split groups.

    Exact duplicates that carry different labels cannot be trained on honestly: they are
    rejected. Near-duplicates with different labels are kept but reported.

    Returns:
        The images with a ``split_group`` column, the rejected images with any conflicting
        duplicates added, and a report of duplicate pairs: every exact pair chained (each file to
        the next copy), and near pairs that link every near-duplicate to its group (see
        :func:`~image_classification.duplicates.near_duplicate_pairs`): a group whose labels differ
        always has a reported pair whose labels differ.
    """
    conflict = _conflicting_exact_duplicates(checked)
    conflicts = checked.loc[conflict, REJECTED_COLUMNS[:-1]].assign(
        reason="exact duplicate of another file with a different label or kind"
    )
    if len(conflicts):
        logger.warning("Rejected %d exact duplicates carrying conflicting labels", len(conflicts))
    images = checked.loc[~conflict].reset_index(drop=True)
    exact = pairs_sharing(images["sha256"])
    near = near_duplicate_pairs(images["phash"], max_distance)
    users = pairs_sharing(images["group"])
    images["split_group"] = connected_groups(len(images), exact, near, users)
    report = _duplicate_report(images, exact, near)
    rejected = pd.concat([rejected, conflicts.astype("string")], ignore_index=True)
    logger.info(
        "Found %d exact and %d near-duplicate links; %d images form %d split groups",
        len(exact), len(near), len(images), images["split_group"].nunique(),
    )
    return images, rejected, report


def _duplicate_report(images: pd.DataFrame, exact: np.ndarray, near: np.ndarray) -> pd.DataFrame:
    """One row per duplicate pair; whole columns at a time, so a million pairs take seconds."""
    columns = ["type", "path", "duplicate_path", "label", "duplicate_label", "labels_differ"]
    frames = []
    for kind, pairs in (("exact", exact), ("near", near)):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        first, second = images.iloc[pairs[:, 0]], images.iloc[pairs[:, 1]]
        keep = np.ones(len(pairs), dtype=bool)
        if kind == "near":  # a pair with the same bytes is already reported as exact
            keep = first["sha256"].to_numpy() != second["sha256"].to_numpy()
        first, second = first[keep], second[keep]
        # an unlabelled image (unseen kind) differs from a labelled one, not from another unlabelled
        label, duplicate_label = (frame["label"].astype(object).fillna("\0").to_numpy() for frame in (first, second))
        frames.append(pd.DataFrame({
            "type": kind, "path": first["path"].to_numpy(), "duplicate_path": second["path"].to_numpy(),
            "label": first["label"].to_numpy(), "duplicate_label": second["label"].to_numpy(),
            "labels_differ": label != duplicate_label,
        }, columns=columns))
    report = pd.concat(frames, ignore_index=True)
    if report["labels_differ"].any():
        logger.warning(
            "%d near-duplicate pairs carry different labels (see duplicate_report)",
            int(report["labels_differ"].sum()),
        )
    return report.astype({c: "string" for c in columns[:-1]}).astype({"labels_differ": bool})


def _manual_split_per_group(labelled: pd.DataFrame) -> pd.Series:
    given = labelled.dropna(subset=["split"])
    per_group = given.groupby("split_group")["split"].agg(lambda s: sorted(set(s)))
    clashing = per_group[per_group.map(len) > 1]
    if not clashing.empty:
        group = clashing.index[0]
        paths = labelled.loc[labelled["split_group"] == group, "path"].head(5).tolist()
        raise SourceError(
            f"images that must stay together (same group column or duplicates) were given "
            f"different splits {clashing.iloc[0]}: {paths}. Give them one split or none"
        )
    return per_group.map(lambda s: s[0])


def split_images(grouped: pd.DataFrame, fractions: SplitFractions, seed: int) -> pd.DataFrame:
    """Assign train/val/test per label, keeping each split group whole and manual splits fixed.

    Groups are shuffled with ``seed`` and placed largest first into the split furthest below
    its target share of that label, so the shares come out as close to the fractions as the
    group sizes allow. Unseen-kind images get the split ``unseen``.
    """
    # a bare runner (tests) may pass the plain dict of parameters
    targets = validated_fractions(asdict(fractions) if isinstance(fractions, SplitFractions) else fractions)
    images = grouped.copy()
    labelled = images[images["label"].notna()]
    assigned = _manual_split_per_group(labelled)
    group_label = labelled.groupby("split_group")["label"].agg(lambda s: s.mode().iloc[0])
    group_size = labelled.groupby("split_group").size()
    assigned = assigned.to_dict()
    sizes = group_size.to_dict()
    rng = np.random.default_rng(seed)
    for label in sorted(group_label.unique()):
        groups = group_label.index[group_label == label].tolist()
        free = [g for g in groups if g not in assigned]
        manual = {assigned[g] for g in groups if g in assigned}
        if len(free) + len(manual) < len(SPLITS):
            raise SourceError(
                f"label '{label}' has only {sum(sizes[g] for g in groups)} image(s) in {len(groups)} "
                "independent group(s); at least 3 are needed to fill train, val and test. "
                "Add images of this label or relax the grouping"
            )
        counts = dict.fromkeys(SPLITS, 0.0)
        for group in groups:
            if group in assigned:
                counts[assigned[group]] += sizes[group]
        total = float(sum(counts.values()) + sum(sizes[g] for g in free))
        order = rng.permutation(len(free))
        free = sorted((free[i] for i in order), key=lambda g: -sizes[g])
        for split in SPLITS:  # every split gets at least one group first
            if counts[split] == 0 and free:
                group = free.pop()  # the smallest group
                assigned[group] = split
                counts[split] += sizes[group]
        for group in free:
            split = max(SPLITS, key=lambda s: targets[s] * total - counts[s])
            assigned[group] = split
            counts[split] += sizes[group]
    images["split"] = images["split_group"].map(assigned).where(images["label"].notna(), "unseen")
    return images.astype({"split": "string"})


def build_image_index(split: pd.DataFrame) -> pd.DataFrame:
    """The columns later stages rely on, with a 0/1 ``target`` (1 = valid)."""
    index = split[["path", "label", "kind", "split", "split_group", "group", "sha256", "phash", "width", "height"]].copy()
    index["target"] = index["label"].map({"valid": 1, "invalid": 0}).astype("Int8")
    return index.reset_index(drop=True)


def summarise_splits(image_index: pd.DataFrame, rejected: pd.DataFrame, duplicates: pd.DataFrame) -> dict:
    """Counts per split and label, rejections per reason and duplicate counts, for humans and viz."""
    labelled = image_index[image_index["label"].notna()]
    counts = labelled.groupby(["split", "label"]).size().unstack(fill_value=0)
    summary = {
        "images": int(len(image_index)),
        "per_split": {
            split: {label: int(counts.loc[split].get(label, 0)) for label in ("valid", "invalid")}
            for split in SPLITS if split in counts.index
        },
        "unseen_kinds": {k: int(v) for k, v in image_index.loc[image_index["split"] == "unseen", "kind"].value_counts().sort_index().items()},
        "rejected": int(len(rejected)),
        "rejected_by_reason": {str(k): int(v) for k, v in rejected["reason"].str.split(":").str[0].value_counts().items()},
        "duplicate_pairs": {"exact": int((duplicates["type"] == "exact").sum()), "near": int((duplicates["type"] == "near").sum())},
        "split_groups": int(labelled["split_group"].nunique()),
    }
    logger.info("Split summary: %s", summary["per_split"])
    return summary
