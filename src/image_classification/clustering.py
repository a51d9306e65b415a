"""Clustering and geometry of an embedding space: pure functions on arrays, no I/O.

Everything here is linear in the number of points except :func:`agglomerative_clusters`, which
clusters at most ``max_samples`` points (a stratified sample) because Ward linkage needs the
O(n^2) distance matrix.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from image_classification.errors import DataError

logger = logging.getLogger(__name__)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
LINKAGES = ("ward", "average", "complete", "single")


def single_threaded_blas(func):
    """Run ``func`` with one BLAS thread.

    Embeddings are ~50 columns wide, too narrow for BLAS threads to pay off, and on a busy
    machine their spin-waiting made Gaussian mixture fits 17x and PCA 10x slower.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return func(*args, **kwargs)

    return wrapper


def stratified_sample(labels: np.ndarray, max_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of ``max_samples`` rows (all rows if fewer), each label keeping its share.

    Shares are rounded by largest remainder; every label present keeps at least one row.
    """
    labels = np.asarray(labels)
    if len(labels) <= max_samples:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    values, counts = np.unique(labels, return_counts=True)
    exact = counts * max_samples / len(labels)
    quotas = np.maximum(1, np.floor(exact).astype(int))
    short = max_samples - quotas.sum()
    if short > 0:
        quotas[np.argsort(-(exact - np.floor(exact)), kind="stable")[:short]] += 1
    chosen = [rng.choice(np.flatnonzero(labels == value), size=quota, replace=False)
              for value, quota in zip(values, quotas)]
    return np.sort(np.concatenate(chosen))


@single_threaded_blas
def fit_pca(x: np.ndarray) -> PCA:
    """A PCA with every component (as many as the data allow), fitted in float64."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise DataError(f"PCA needs at least 2 points to fit, got {len(x)}")
    return PCA(n_components=min(x.shape)).fit(x)


@dataclass(frozen=True)
class MixtureFits:
    """Gaussian mixtures fitted with several numbers of components, and the BIC of each."""

    models: dict[int, GaussianMixture]
    bic: dict[int, float]

    @property
    def best(self) -> GaussianMixture:
        """The mixture with the lowest BIC."""
        return self.models[min(self.bic, key=self.bic.get)]


def _sorted_by_weight(model: GaussianMixture) -> GaussianMixture:
    """Renumber components by decreasing weight, so component 0 is the largest."""
    order = np.argsort(-model.weights_, kind="stable")
    model.weights_ = model.weights_[order]
    model.means_ = model.means_[order]
    if model.covariance_type != "tied":
        model.covariances_ = model.covariances_[order]
        model.precisions_ = model.precisions_[order]
        model.precisions_cholesky_ = model.precisions_cholesky_[order]
    return model


@single_threaded_blas
def fit_gaussian_mixtures(x: np.ndarray, components: range | list[int], covariance_type: str,
                          seed: int, reg_covar: float = 1e-6, patience: int | None = None) -> MixtureFits:
    """A Gaussian mixture for every number of ``components`` (in increasing order), with its BIC on ``x``.

    With ``patience``, larger numbers are not tried once the BIC has risen above its lowest
    value for ``patience`` successive numbers of components. A number of components larger than
    the number of points is skipped; one whose fit fails (a collapsed component) is skipped
    with a warning. Components are numbered by weight.
    """
    x = np.asarray(x, dtype=np.float64)  # float32 covariances of near-degenerate embeddings fail
    models, bic = {}, {}
    for k in sorted(components):
        if k > len(x) or (patience and _rises_since_lowest(bic) >= patience):
            break
        try:
            model = GaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar, random_state=seed).fit(x)
        except ValueError as error:
            logger.warning("Gaussian mixture with %d components failed (%s); skipped", k, str(error).split(".")[0])
            continue
        models[k], bic[k] = _sorted_by_weight(model), float(model.bic(x))
        logger.debug("Gaussian mixture with %d components: BIC %.1f after %d iterations", k, bic[k], model.n_iter_)
    if not models:
        raise DataError(
            f"no Gaussian mixture with {list(components)} components could be fitted on {len(x)} points; "
            "increase embedding_analysis.gmm_reg_covar or use gmm_covariance_type diag"
        )
    return MixtureFits(models, bic)


def _rises_since_lowest(bic: dict[int, float]) -> int:
    """How many of the last numbers of components tried came after the lowest BIC so far."""
    values = list(bic.values())
    return len(values) - 1 - int(np.argmin(values)) if values else 0


@single_threaded_blas
def agglomerative_clusters(x: np.ndarray, n_clusters: int, linkage: str) -> np.ndarray:
    """Hierarchical clusters of every row of ``x`` (O(n^2) memory: pass a sample)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < n_clusters:
        raise DataError(f"agglomerative clustering into {n_clusters} clusters needs as many points, got {len(x)}")
    assigned = AgglomerativeClustering(n_clusters=n_clusters, linkage=linkage).fit_predict(x)
    return relabel_by_size(assigned)


def relabel_by_size(clusters: np.ndarray) -> np.ndarray:
    """The same partition with cluster 0 the largest, 1 the next, and so on."""
    values, inverse, counts = np.unique(clusters, return_inverse=True, return_counts=True)
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(values))
    return rank[inverse]


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """The share of points whose cluster's majority label is their own label."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if len(labels) == 0:
        return float("nan")
    _, label_codes = np.unique(labels, return_inverse=True)
    _, cluster_codes = np.unique(clusters, return_inverse=True)
    table = np.zeros((cluster_codes.max() + 1, label_codes.max() + 1), dtype=np.int64)
    np.add.at(table, (cluster_codes, label_codes), 1)
    return float(table.max(axis=1).sum() / len(labels))


def sampled_silhouette(x: np.ndarray, clusters: np.ndarray, sample_size: int, seed: int) -> float | None:
    """Mean silhouette in ``x`` on at most ``sample_size`` random points; None with one cluster."""
    clusters = np.asarray(clusters)
    rows = np.arange(len(clusters))
    if len(rows) > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=sample_size, replace=False))
    if not 2 <= len(np.unique(clusters[rows])) <= len(rows) - 1:
        return None
    return float(silhouette_score(np.asarray(x, dtype=np.float64)[rows], clusters[rows]))


@single_threaded_blas
def agreement_scores(x: np.ndarray, labels: np.ndarray, clusters: np.ndarray,
                     silhouette_sample_size: int, seed: int) -> dict[str, float | int | None]:
    """How well clusters match the labels (ARI, NMI, purity) and how compact they are (silhouette)."""
    return {
        "clusters": int(len(np.unique(clusters))),
        "points": int(len(clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "purity": purity(labels, clusters),
        "silhouette": sampled_silhouette(x, clusters, silhouette_sample_size, seed),
    }


@single_threaded_blas
def predict_clusters(model: GaussianMixture, x: np.ndarray) -> np.ndarray:
    """The most likely component of every row of ``x``."""
    return model.predict(np.asarray(x, dtype=np.float64))


def full_covariances(model: GaussianMixture) -> np.ndarray:
    """The (k, d, d) covariance of every component, whatever the mixture's covariance type."""
    k, d = model.means_.shape
    covariances = model.covariances_
    if model.covariance_type == "full":
        return covariances
    if model.covariance_type == "tied":
        return np.broadcast_to(covariances, (k, d, d)).copy()
    if model.covariance_type == "diag":
        return np.stack([np.diag(row) for row in covariances])
    return np.stack([np.eye(d) * value for value in covariances])


def project_gaussians(means: np.ndarray, covariances: np.ndarray, center: np.ndarray,
                      components: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussians in the original space, seen in a linear projection ``(x - center) @ components.T``.

    Returns the projected (k, p) means and (k, p, p) covariances: exact, since the image of a
    Gaussian under a linear map is the Gaussian with mean ``W m`` and covariance ``W S W^T``.
    """
    projected_means = (means - center) @ components.T
    projected_covariances = np.einsum("pd,kde,qe->kpq", components, covariances, components)
    return projected_means, projected_covariances


@single_threaded_blas
def class_spread(x: np.ndarray, labels: np.ndarray, centroids: dict[str, np.ndarray] | None = None) -> dict:
    """Per label: how far points lie from their label's centroid, and how many dimensions they fill.

    ``centroids`` (e.g. computed on the training split) default to each label's own mean.
    ``effective_dimensions`` is the participation ratio of the label's covariance spectrum,
    (sum of eigenvalues)^2 / sum of squared eigenvalues: 1 for points on a line, d for a round cloud.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    spread = {}
    for label in sorted(np.unique(labels)):
        points = x[labels == label]
        centroid = points.mean(axis=0) if centroids is None else centroids[label]
        distances = np.linalg.norm(points - centroid, axis=1)
        eigenvalues = np.linalg.eigvalsh(np.cov(points, rowvar=False)) if len(points) > 1 else np.zeros(1)
        eigenvalues = np.clip(eigenvalues, 0, None)
        spread[str(label)] = {
            "points": int(len(points)),
            "mean_distance_to_centroid": float(distances.mean()),
            "median_distance_to_centroid": float(np.median(distances)),
            "p90_distance_to_centroid": float(np.quantile(distances, 0.9)),
            "rms_radius": float(np.sqrt(np.mean(distances**2))),
            "effective_dimensions": float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum()) if eigenvalues.any() else 0.0,
        }
    return spread


def class_centroids(x: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The mean point of every label."""
    x, labels = np.asarray(x, dtype=np.float64), np.asarray(labels)
    return {str(label): x[labels == label].mean(axis=0) for label in sorted(np.unique(labels))}


@single_threaded_blas
def nearest_centroid_share(x: np.ndarray, labels: np.ndarray, centroids: dict[str, np.ndarray]) -> float:
    """The share of points closer to their own label's centroid than to any other."""
    names = list(centroids)
    distances = np.stack([np.linalg.norm(np.asarray(x, np.float64) - centroids[n], axis=1) for n in names], axis=1)
    nearest = np.asarray(names)[distances.argmin(axis=1)]
    return float(np.mean(nearest == np.asarray(labels).astype(str)))
