"""Generated stand-ins for the embedding_analysis stage's tables, shared by tests and the speed check."""

from __future__ import annotations

import numpy as np
import pandas as pd

VALID_SPREAD = 1.0
INVALID_SPREAD = 2.5


def embeddings_table(rows: int, seed: int = 0, dims: int = 50, unreadable: int = 2) -> pd.DataFrame:
    """A table shaped like ``image_embeddings``: two well-separated classes, valid dense and
    invalid ``INVALID_SPREAD / VALID_SPREAD`` times wider, ~10% unseen-kind rows and a few
    unreadable rows (score NaN, error set)."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(["valid", "invalid", "texture"], size=rows, p=[0.45, 0.45, 0.10])
    labelled = kind != "texture"
    split = np.where(labelled, rng.choice(["train", "val", "test"], size=rows, p=[0.7, 0.2, 0.1]), "unseen")
    centre = np.zeros(dims)
    centre[0] = 15.0
    embedding = np.where((kind == "valid")[:, None], centre + rng.normal(0, VALID_SPREAD, (rows, dims)),
                         -centre + rng.normal(0, INVALID_SPREAD, (rows, dims)))
    embedding[kind == "texture"] = rng.normal(0, 1.0, (int((kind == "texture").sum()), dims)) + 40.0
    score = np.where(kind == "valid", 0.9, 0.1).astype(np.float32)
    error = np.full(rows, "", dtype=object)
    broken = rng.choice(np.flatnonzero(labelled & (split == "train")), size=unreadable, replace=False)
    score[broken], error[broken] = np.nan, "truncated image"
    table = pd.DataFrame({
        "path": [f"/images/{k}/{i:06d}.png" for i, k in enumerate(kind)],
        "split": pd.array(split, dtype="string"),
        "label": pd.array(np.where(labelled, kind, None), dtype="string"),
        "kind": pd.array(kind, dtype="string"),
        "target": pd.array(np.where(labelled, (kind == "valid").astype(int), None), dtype="Int8"),
        "score": score,
        "predicted_label": pd.array(np.where(score > 0.5, "valid", "invalid"), dtype="string"),
        "error": pd.array(error, dtype="string"),
    })
    table.loc[np.isnan(score), "predicted_label"] = pd.NA
    columns = pd.DataFrame(embedding.astype(np.float32), columns=[f"e{i}" for i in range(dims)])
    return pd.concat([table, columns], axis=1)
