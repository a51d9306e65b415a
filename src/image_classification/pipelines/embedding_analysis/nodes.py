"""Nodes of the embedding_analysis pipeline: the classifier's 50-d embedding of every image,
its principal components, clusters and their agreement with the labels, and the shape of the space.

PCA, clustering and every number are fitted on labelled, readable images only (PCA on the
training split); unseen-kind images are embedded and projected for the zero_shot stage.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from image_classification.artefacts import Checkpoint, ScoredIndex
from image_classification.clustering import (
    agglomerative_clusters,
    agreement_scores,
    class_centroids,
    class_spread,
    fit_gaussian_mixtures,
    fit_pca,
    full_covariances,
    nearest_centroid_share,
    predict_clusters,
    project_gaussians,
    stratified_sample,
)
from image_classification.errors import DataError
from image_classification.parameters.embedding_analysis import EmbeddingAnalysisConfig
from image_classification.plots import embedding as embedding_plots
from image_classification.scorers import ServedScore

logger = logging.getLogger(__name__)

METHODS = {"gmm": "GMM (k by BIC)", "gmm_2": "GMM (k = 2)", "agglomerative": "Agglomerative"}
SHORT_NAMES = {"gmm": "GMM (BIC)", "gmm_2": "GMM k=2", "agglomerative": "Agglomerative"}  # in the composition panel


def embedding_columns(table: pd.DataFrame) -> list[str]:
    """The embedding's columns ``e0..e{d-1}``, in order."""
    return sorted((c for c in table.columns if re.fullmatch(r"e\d+", c)), key=lambda c: int(c[1:]))


def _analysed(table: pd.DataFrame) -> pd.DataFrame:
    """The labelled images that could be read: what PCA, clusters and numbers are fitted on."""
    return table.loc[table["label"].notna() & table["score"].notna()].reset_index(drop=True)


def embed_images(scored_index: dict, model_checkpoint: dict, image_index: pd.DataFrame,
                 operating_point: dict, backbone_features: dict | None = None) -> pd.DataFrame:
    """The score and 50-d embedding of every indexed image (unseen kinds too), from the score stage.

    Returns:
        One row per image: path, split, label, kind, target, score (the model's), ``predicted_label``
        (``valid`` when the served candidate's score reaches evaluate's operating threshold, as in
        zero_shot and predict; NA if unreadable), error and e0..e49. ``backbone_features`` is read
        only when the served candidate is the patch classifier (for the patch vectors).
    """
    checkpoint = Checkpoint.from_payload(model_checkpoint)
    scored = ScoredIndex.from_payload(scored_index).check(image_index, checkpoint)
    threshold = ServedScore.of(operating_point)
    threshold.threshold_for(checkpoint)
    table = scored.table(image_index)
    served = threshold.scores_of_index(scored, image_index, backbone_features)
    table.insert(6, "predicted_label", threshold.predicted_labels(served))
    logger.info("Embedded %d images (%d unreadable) into %d dimensions", len(table),
                int(table["score"].isna().sum()), len(embedding_columns(table)))
    return table


def fit_pca_basis(image_embeddings: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """PCA of the training split's labelled embeddings.

    Returns:
        The basis (``mean``, ``components`` as rows, ``fitted_on``) and the explained variance
        per component (``component``, ``explained_variance_ratio``, ``cumulative``).
    """
    train = _analysed(image_embeddings).query("split == 'train'")
    if len(train) < 3:
        raise DataError(f"PCA is fitted on the training split, which has only {len(train)} readable labelled images")
    pca = fit_pca(train[embedding_columns(train)].to_numpy())
    ratio = pca.explained_variance_ratio_
    variance = pd.DataFrame({"component": np.arange(1, len(ratio) + 1), "explained_variance_ratio": ratio,
                             "cumulative": np.cumsum(ratio)})
    basis = {"mean": pca.mean_, "components": pca.components_, "fitted_on": int(len(train))}
    logger.info("PCA on %d training embeddings: PC1-3 explain %s", len(train),
                ", ".join(f"{r:.1%}" for r in ratio[:3]))
    return basis, variance


def project_embeddings(image_embeddings: pd.DataFrame, pca_basis: dict, config: EmbeddingAnalysisConfig) -> pd.DataFrame:
    """Every image's first ``pca_components`` principal coordinates (NaN when unreadable)."""
    count = min(int(config.pca_components), len(pca_basis["components"]))
    x = image_embeddings[embedding_columns(image_embeddings)].to_numpy(np.float64)
    coordinates = (x - pca_basis["mean"]) @ pca_basis["components"][:count].T
    coordinates[image_embeddings["score"].isna().to_numpy()] = np.nan
    projection = image_embeddings[["path", "split", "label", "kind", "score", "predicted_label"]].reset_index(drop=True)
    return pd.concat([projection, pd.DataFrame(coordinates, columns=[f"pc{i + 1}" for i in range(count)])], axis=1)


def cluster_embeddings(image_embeddings: pd.DataFrame, config: EmbeddingAnalysisConfig,
                       seed: int) -> tuple[pd.DataFrame, dict]:
    """Cluster the labelled embeddings: a GMM with k chosen by BIC, a 2-component GMM, and
    agglomerative clustering (on a stratified sample above ``agglomerative_max_samples``).

    Returns:
        One row per labelled readable image (path, split, label, ``gmm``, ``gmm_2``,
        ``agglomerative``: cluster numbers, 0 the largest; NA where not sampled) and the
        fitted models as arrays (means and full covariances in embedding space, BIC per k).
    """
    analysed = _analysed(image_embeddings)
    x = analysed[embedding_columns(analysed)].to_numpy(np.float64)
    labels = analysed["label"].to_numpy(str)
    fit_rows = stratified_sample(labels, config.gmm_max_samples, seed)
    low, high = config.gmm_components
    fits = fit_gaussian_mixtures(x[fit_rows], range(low, high + 1), config.gmm_covariance_type, seed,
                                 config.gmm_reg_covar, config.gmm_bic_patience)
    two = fits if 2 in fits.models else fit_gaussian_mixtures(
        x[fit_rows], [2], config.gmm_covariance_type, seed, config.gmm_reg_covar)
    mixtures = {"gmm": (fits.best, fits.bic), "gmm_2": (two.models[2], {2: two.bic[2]})}
    assignments = analysed[["path", "split", "label"]].copy()
    for name, (model, _) in mixtures.items():
        assignments[name] = predict_clusters(model, x)
    sample = stratified_sample(labels, config.agglomerative_max_samples, seed)
    assignments["agglomerative"] = pd.array([pd.NA] * len(x), dtype="Int64")
    assignments.loc[sample, "agglomerative"] = agglomerative_clusters(
        x[sample], config.agglomerative_clusters, config.agglomerative_linkage)
    models = {name: {"means": model.means_, "covariances": full_covariances(model), "weights": model.weights_,
                     "bic": bic, "fitted_on": int(len(fit_rows))}
              for name, (model, bic) in mixtures.items()}
    models["agglomerative"] = {"clustered": int(len(sample)), "labelled": int(len(x))}
    return assignments, models


def _composition(assignments: pd.DataFrame, method: str) -> pd.DataFrame:
    clustered = assignments.dropna(subset=[method])
    counts = pd.crosstab(clustered[method].astype(int), clustered["label"].astype(str))
    table = pd.DataFrame({"method": method, "cluster": counts.index.to_numpy(), "size": counts.sum(axis=1).to_numpy()})
    for label in counts.columns:
        table[label] = counts[label].to_numpy()
    table["majority_label"] = counts.idxmax(axis=1).to_numpy()
    table["majority_share"] = (counts.max(axis=1) / counts.sum(axis=1)).to_numpy()
    return table


def score_clusters(cluster_assignments: pd.DataFrame, image_embeddings: pd.DataFrame, cluster_models: dict,
                   config: EmbeddingAnalysisConfig, seed: int) -> tuple[dict, pd.DataFrame]:
    """ARI, NMI, purity and silhouette of each clustering, and every cluster's label composition."""
    analysed = _analysed(image_embeddings)
    x = analysed[embedding_columns(analysed)].to_numpy(np.float64)
    metrics = {"space": f"classifier embedding ({x.shape[1]}-d)", "labelled_points": int(len(x))}
    for method in METHODS:
        rows = cluster_assignments[method].notna().to_numpy()
        scores = agreement_scores(x[rows], cluster_assignments.loc[rows, "label"].to_numpy(str),
                                  cluster_assignments.loc[rows, method].to_numpy(int), config.silhouette_sample_size, seed)
        metrics[method] = scores | _method_details(method, cluster_models[method], config)
    composition = pd.concat([_composition(cluster_assignments, method) for method in METHODS], ignore_index=True)
    counts = [c for c in composition.columns if c not in ("method", "cluster", "size", "majority_label", "majority_share")]
    composition[counts] = composition[counts].fillna(0).astype("int64")
    return metrics, composition


def _method_details(method: str, model: dict, config: EmbeddingAnalysisConfig) -> dict:
    if method == "agglomerative":
        sampled = model["clustered"] < model["labelled"]
        return {
            "linkage": config.agglomerative_linkage, "sampled": bool(sampled),
            "note": (f"clustered a stratified sample of {model['clustered']} of {model['labelled']} labelled images "
                     "(O(n^2) memory); scores are on that sample") if sampled else "clustered every labelled image",
        }
    details = {"covariance_type": config.gmm_covariance_type, "fitted_on": model["fitted_on"],
               "bic": {str(k): v for k, v in model["bic"].items()}}
    if method == "gmm":
        details["chosen_by"] = f"lowest BIC over k in {list(config.gmm_components)}" + (
            f", stopping once BIC rose for {config.gmm_bic_patience} successive k" if config.gmm_bic_patience else "")
    return details


def summarise_embedding_space(image_embeddings: pd.DataFrame, pca_explained_variance: pd.DataFrame,
                              clustering_metrics: dict) -> dict:
    """The shape of the space as numbers: each class's spread around its training centroid,
    per split, the distance between centroids, and the stage's headline clustering scores."""
    analysed = _analysed(image_embeddings)
    x = analysed[embedding_columns(analysed)].to_numpy(np.float64)
    labels, splits = analysed["label"].to_numpy(str), analysed["split"].to_numpy(str)
    train = splits == "train"
    centroids = class_centroids(x[train], labels[train])
    summary = {
        "space": clustering_metrics["space"], "centroids_from": "train split",
        "per_class": class_spread(x, labels, centroids),
        "per_split": {split: _split_spread(x[splits == split], labels[splits == split], centroids)
                      for split in ("train", "val", "test") if (splits == split).any()},
        "pca_cumulative_variance": {("pc1" if r.component == 1 else f"pc1_to_pc{r.component}"): float(r.cumulative)
                                    for r in pca_explained_variance.head(3).itertuples()},
        "clustering": {m: {"clusters": clustering_metrics[m]["clusters"], "ari": clustering_metrics[m]["ari"],
                           "nmi": clustering_metrics[m]["nmi"]} for m in METHODS},
    }
    summary |= _density_comparison(summary["per_class"], centroids)
    _log_stage_summary(summary)
    return summary


def _split_spread(x: np.ndarray, labels: np.ndarray, centroids: dict) -> dict:
    """How far one split's images lie from the training centroids, and how many are nearest their own."""
    spread = class_spread(x, labels, centroids)
    return {"mean_distance_to_train_centroid": {label: v["mean_distance_to_centroid"] for label, v in spread.items()},
            "nearest_centroid_share": nearest_centroid_share(x, labels, centroids)}


def _density_comparison(per_class: dict, centroids: dict) -> dict:
    """Which class is denser, by how much, and how far apart the classes lie relative to their size."""
    if set(per_class) != {"valid", "invalid"}:
        return {}
    valid, invalid = per_class["valid"], per_class["invalid"]
    distance = float(np.linalg.norm(centroids["valid"] - centroids["invalid"]))
    return {
        "centroid_distance": distance,
        "denser_class": "valid" if valid["mean_distance_to_centroid"] < invalid["mean_distance_to_centroid"] else "invalid",
        "invalid_to_valid_spread_ratio": invalid["mean_distance_to_centroid"] / max(valid["mean_distance_to_centroid"], 1e-12),
        "separation": distance / max((valid["rms_radius"] + invalid["rms_radius"]) / 2, 1e-12),
    }


def _log_stage_summary(summary: dict) -> None:
    clustering = summary["clustering"]
    logger.info(
        "Embedding clusters vs labels: GMM k=%d by BIC ARI %.3f NMI %.3f | GMM k=2 ARI %.3f NMI %.3f | "
        "agglomerative ARI %.3f NMI %.3f",
        clustering["gmm"]["clusters"], clustering["gmm"]["ari"], clustering["gmm"]["nmi"],
        clustering["gmm_2"]["ari"], clustering["gmm_2"]["nmi"],
        clustering["agglomerative"]["ari"], clustering["agglomerative"]["nmi"],
    )
    spread = ", ".join(f"{label} {values['mean_distance_to_centroid']:.3g} (~{values['effective_dimensions']:.1f} dims)"
                       for label, values in summary["per_class"].items())
    logger.info("Mean distance to class centroid: %s", spread)
    if "denser_class" in summary:
        logger.info("Denser class: %s; invalid/valid spread %.2fx; centroid distance %.3g = %.1f mean class radii",
                    summary["denser_class"], summary["invalid_to_valid_spread_ratio"], summary["centroid_distance"],
                    summary["separation"])


# ---------------------------------------------------------------- figures

def _figure_rows(projection: pd.DataFrame, max_points: int, seed: int) -> pd.DataFrame:
    """Readable rows, at most ``max_points`` of them, sampled keeping each label and split's share."""
    readable = projection.loc[projection["pc1"].notna()].reset_index(drop=True)
    strata = readable["label"].fillna("unseen").astype(str) + "/" + readable["split"].astype(str)
    return readable.iloc[stratified_sample(strata.to_numpy(), max_points, seed)]


def plot_explained_variance(pca_explained_variance: pd.DataFrame) -> Figure:
    """Variance explained by each principal component (log scale), and cumulatively by the first ten."""
    return embedding_plots.explained_variance_figure(pca_explained_variance)


def plot_pca_scatter(pca_projection: pd.DataFrame, pca_explained_variance: pd.DataFrame,
                     config: EmbeddingAnalysisConfig, seed: int) -> Figure:
    """Labelled images on the first two principal components: colour is the label, marker the split."""
    labelled = pca_projection.loc[pca_projection["label"].notna()]
    rows = _figure_rows(labelled, config.figure_max_points, seed)
    return embedding_plots.pca_scatter_figure(rows, pca_explained_variance, int(labelled["pc1"].notna().sum()))


def plot_pca_scatter_3d(pca_projection: pd.DataFrame, pca_explained_variance: pd.DataFrame,
                        config: EmbeddingAnalysisConfig, seed: int) -> go.Figure:
    """Interactive 3D scatter of the first three principal components; hover shows path, label,
    score and split. Unseen kinds are one faint trace, hidden until clicked in the legend."""
    rows = _figure_rows(pca_projection, config.figure_max_points, seed)
    return embedding_plots.pca_scatter_3d_plotly(rows, pca_explained_variance, int(pca_projection["pc1"].notna().sum()))


def plot_cluster_comparison(pca_projection: pd.DataFrame, cluster_assignments: pd.DataFrame, cluster_models: dict,
                            pca_basis: dict, clustering_metrics: dict, cluster_composition: pd.DataFrame,
                            config: EmbeddingAnalysisConfig, seed: int) -> Figure:
    """Side by side on PC1/PC2: true labels, GMM clusters with their ellipses, agglomerative
    clusters; below, the BIC curve and each cluster's label composition."""
    merged = cluster_assignments.merge(pca_projection[["path", "pc1", "pc2"]], on="path", how="left", validate="one_to_one")
    rows = _figure_rows(merged, config.figure_max_points, seed)
    panels = []
    for method, name in METHODS.items():
        clustered = merged.dropna(subset=[method])
        shown = rows if len(clustered) == len(merged) else _figure_rows(clustered, config.figure_max_points, seed)
        centers = covariances = None
        if method in ("gmm", "gmm_2"):
            model = cluster_models[method]
            centers, covariances = project_gaussians(model["means"], model["covariances"], pca_basis["mean"],
                                                     pca_basis["components"][:2])
        panels.append(embedding_plots.ClusterPanel(
            name, clustering_metrics[method], shown[["pc1", "pc2"]].assign(cluster=shown[method]),
            clustered[method].value_counts().to_dict(), centers, covariances))
    gmm = clustering_metrics["gmm"]
    bic = embedding_plots.BicCurve(gmm["bic"], gmm["clusters"], gmm["covariance_type"], config.gmm_components[1])
    composition = cluster_composition.assign(method=cluster_composition["method"].map(SHORT_NAMES))
    return embedding_plots.cluster_comparison_figure(rows, len(merged), panels, bic, composition)
