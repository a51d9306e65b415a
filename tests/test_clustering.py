"""Known answers for the clustering and geometry helpers, on generated blobs and hand-made points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture

from image_classification.clustering import (
    agglomerative_clusters,
    agreement_scores,
    class_centroids,
    class_spread,
    fit_gaussian_mixtures,
    full_covariances,
    nearest_centroid_share,
    project_gaussians,
    purity,
    sampled_silhouette,
    stratified_sample,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated blobs of unequal size in 10 dimensions."""
    return make_blobs(n_samples=[300, 200, 100], n_features=10, cluster_std=0.6, center_box=(-20, 20), random_state=0)


def test_gaussian_mixture_bic_finds_the_three_blobs(blobs):
    x, truth = blobs
    fits = fit_gaussian_mixtures(x, range(1, 7), "full", seed=0)
    assert fits.best.n_components == 3
    assert set(fits.bic) == set(range(1, 7))
    assert adjusted_rand_score(truth, fits.best.predict(x)) > 0.99
    assert fits.best.weights_.tolist() == sorted(fits.best.weights_, reverse=True)  # component 0 is the largest
    assert np.bincount(fits.best.predict(x)).tolist() == [300, 200, 100]


def test_bic_patience_stops_trying_larger_mixtures(blobs):
    x, _ = blobs
    fits = fit_gaussian_mixtures(x, range(1, 9), "diag", seed=0, patience=2)
    assert fits.best.n_components == 3
    assert sorted(fits.bic) == [1, 2, 3, 4, 5]


def test_agglomerative_clustering_finds_the_blobs_largest_first(blobs):
    x, truth = blobs
    clusters = agglomerative_clusters(x, 3, "ward")
    assert adjusted_rand_score(truth, clusters) > 0.99
    assert np.bincount(clusters).tolist() == [300, 200, 100]


def test_agreement_scores_on_a_perfect_and_a_blurred_clustering(blobs):
    x, truth = blobs
    perfect = agreement_scores(x, truth.astype(str), (truth + 5) % 3, silhouette_sample_size=10_000, seed=0)
    assert perfect["ari"] == pytest.approx(1.0) and perfect["nmi"] == pytest.approx(1.0)
    assert perfect["purity"] == 1.0 and perfect["clusters"] == 3 and perfect["points"] == 600
    assert perfect["silhouette"] > 0.8
    one = agreement_scores(x, truth.astype(str), np.zeros(len(x), int), silhouette_sample_size=100, seed=0)
    assert one["ari"] == pytest.approx(0.0) and one["silhouette"] is None
    assert one["purity"] == pytest.approx(0.5)


def test_purity_counts_the_majority_of_each_cluster():
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    assert purity(labels, np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(5 / 6)
    assert purity(labels, np.arange(6)) == 1.0


def test_silhouette_on_a_sample_is_close_to_the_full_one(blobs):
    x, truth = blobs
    full = sampled_silhouette(x, truth, sample_size=10_000, seed=0)
    assert sampled_silhouette(x, truth, sample_size=300, seed=0) == pytest.approx(full, abs=0.05)


def test_stratified_sample_keeps_each_labels_share():
    labels = np.array(["valid"] * 900 + ["invalid"] * 95 + ["rare"] * 5)
    rows = stratified_sample(labels, 100, seed=0)
    counts = dict(zip(*np.unique(labels[rows], return_counts=True)))
    assert counts == {"valid": 90, "invalid": 9, "rare": 1}
    assert np.all(np.diff(rows) > 0)
    assert stratified_sample(labels[:50], 100, seed=0).tolist() == list(range(50))


def test_projected_gaussians_are_exact_for_an_axis_projection():
    means = np.array([[1.0, 2.0, 3.0]])
    covariances = np.diag([1.0, 4.0, 9.0])[None]
    center = np.array([1.0, 1.0, 1.0])
    components = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    projected_means, projected_covariances = project_gaussians(means, covariances, center, components)
    np.testing.assert_allclose(projected_means, [[1.0, 2.0]])
    np.testing.assert_allclose(projected_covariances, [np.diag([4.0, 9.0])])


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_full_covariances_match_the_mixtures_own_densities(blobs, covariance_type):
    x, _ = blobs
    model = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(x[:200])
    covariances = full_covariances(model)
    assert covariances.shape == (2, 10, 10)
    as_full = GaussianMixture(2, covariance_type="full")
    as_full.weights_, as_full.means_, as_full.covariances_ = model.weights_, model.means_, covariances
    as_full.precisions_cholesky_ = np.linalg.cholesky(np.linalg.inv(covariances))
    np.testing.assert_allclose(as_full.score_samples(x[:20]), model.score_samples(x[:20]), rtol=1e-6)


def test_class_spread_measures_distance_and_dimensions():
    line = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    rng = np.random.default_rng(0)
    ball = rng.normal(0, 1, (4000, 3)) + 10
    x = np.vstack([line, ball])
    labels = np.array(["line"] * 4 + ["ball"] * 4000)
    spread = class_spread(x, labels)
    assert spread["line"]["mean_distance_to_centroid"] == pytest.approx(2.0)
    assert spread["line"]["effective_dimensions"] == pytest.approx(1.0)
    assert spread["ball"]["effective_dimensions"] == pytest.approx(3.0, abs=0.1)
    centroids = class_centroids(x, labels)
    shifted = class_spread(x, labels, {"line": centroids["line"] + [0, 0, 1], "ball": centroids["ball"]})
    assert shifted["line"]["mean_distance_to_centroid"] > spread["line"]["mean_distance_to_centroid"]
    assert nearest_centroid_share(x, labels, centroids) == 1.0
