"""embedding_analysis nodes on a tiny checkpoint and on small generated embedding tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
import yaml
from matplotlib.figure import Figure

from image_classification.scorers.baseline import BaselineWeights
from image_classification.errors import DataError
from image_classification.patches import PatchClassifier
from image_classification.pipelines.embedding_analysis.nodes import (
    EmbeddingAnalysisConfig,
    cluster_embeddings,
    embed_images,
    embedding_columns,
    fit_pca_basis,
    plot_cluster_comparison,
    plot_explained_variance,
    plot_pca_scatter,
    plot_pca_scatter_3d,
    project_embeddings,
    score_clusters,
    summarise_embedding_space,
)

from ...conftest import REPO_ROOT, resealed_operating_point
from .generated import INVALID_SPREAD, VALID_SPREAD

SMALL = EmbeddingAnalysisConfig(gmm_components=(1, 4), agglomerative_max_samples=100, figure_max_points=150)


@pytest.fixture(scope="module")
def analysed(small_embeddings) -> dict:
    """Every node's output on ``small_embeddings``, computed once for the tests below."""
    basis, variance = fit_pca_basis(small_embeddings)
    assignments, models = cluster_embeddings(small_embeddings, SMALL, seed=0)
    metrics, composition = score_clusters(assignments, small_embeddings, models, SMALL, seed=0)
    return {"basis": basis, "variance": variance, "projection": project_embeddings(small_embeddings, basis, SMALL),
            "assignments": assignments, "models": models, "metrics": metrics, "composition": composition}


def test_parameters_file_builds_the_config():
    parameters = yaml.safe_load(Path(REPO_ROOT / "conf/base/parameters_embedding_analysis.yml").read_text())
    config = EmbeddingAnalysisConfig(**parameters["embedding_analysis"])
    assert config.gmm_components == (1, 8) and config.pca_components == 3


@pytest.mark.parametrize("bad", [{"gmm_components": [3, 2]}, {"gmm_covariance_type": "round"},
                                 {"agglomerative_linkage": "centroid"}, {"pca_components": 2},
                                 {"gmm_bic_patience": 0}, {"figure_max_points": 1}])
def test_config_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match="embedding_analysis"):
        EmbeddingAnalysisConfig(**bad)


def test_embed_images_reads_every_image_from_the_score_stage(tiny_scores, tiny_checkpoint, tiny_index,
                                                             tiny_operating_point):
    table = embed_images(tiny_scores, tiny_checkpoint, tiny_index, tiny_operating_point)
    assert list(table.columns[:8]) == ["path", "split", "label", "kind", "target", "score", "predicted_label", "error"]
    assert embedding_columns(table) == [f"e{i}" for i in range(50)] == list(table.columns[8:])
    assert len(table) == len(tiny_index) and (table["split"] == "unseen").sum() == 4
    readable = table["score"].notna()
    assert not readable[2] and pd.isna(table.loc[2, "predicted_label"]) and table.loc[2, "error"] == "truncated image"
    # one meaning of predicted_label in every stage: valid at evaluate's operating threshold
    expected = np.where(table.loc[readable, "score"] >= 0.47, "valid", "invalid")
    assert table.loc[readable, "predicted_label"].tolist() == expected.tolist()


def test_predicted_labels_follow_the_baseline_when_evaluate_serves_it(tiny_scores, tiny_checkpoint, tiny_index,
                                                                      tiny_operating_point):
    """With the baseline's operating point, predicted_label is the baseline's call on the pooled
    features (as in predict and zero_shot); the score and embedding stay the model's."""
    pooled = tiny_scores["tensors"]["pooled"].float().numpy()
    rng = np.random.default_rng(0)
    weights = BaselineWeights(mean=pooled.mean(axis=0), scale=pooled.std(axis=0) + 1e-3,
                              coef=rng.normal(0, 1, pooled.shape[1]), intercept=0.0, c=1.0,
                              backbone="efficientnet_lite0")
    served = weights.score(pooled)
    point = resealed_operating_point(tiny_operating_point, candidate="baseline", threshold=float(np.median(served)),
                                     served_weights=weights.to_payload())
    table = embed_images(tiny_scores, tiny_checkpoint, tiny_index, point)
    readable = table["score"].notna().to_numpy()
    expected = np.where(served[readable] >= point["threshold"], "valid", "invalid")
    assert table.loc[readable, "predicted_label"].tolist() == expected.tolist()
    assert 0 < (expected == "valid").sum() < readable.sum() and pd.isna(table.loc[2, "predicted_label"])
    np.testing.assert_array_equal(table["score"], tiny_scores["tensors"]["score"].numpy())


def test_predicted_labels_follow_the_patch_classifier_when_evaluate_serves_it(tiny_scores, tiny_checkpoint,
                                                                              tiny_index, tiny_features,
                                                                              tiny_operating_point):
    """With the patch classifier served, predicted_label is its call on the cached patch vectors (as in
    zero_shot and predict); a cache without patches cannot serve it, and the error says what to rerun."""
    generator = torch.Generator().manual_seed(2)
    patches = torch.rand(len(tiny_index), 4, 6, generator=generator)
    patches[torch.as_tensor((tiny_index["label"] == "invalid").fillna(False).to_numpy(dtype=bool)), 0] += 2.0
    classifier = PatchClassifier.fit(patches[:14], tiny_index["target"].to_numpy()[:14].astype(int), epochs=5,
                                     hidden=4, top_k=1)
    served = classifier.scores(patches)
    point = resealed_operating_point(tiny_operating_point, candidate="patch_classifier",
                                     threshold=float(np.median(served)), served_weights=classifier.to_payload(grid=2))
    features = {**tiny_features, "tensors": {**tiny_features["tensors"], "patches": patches.half()}}
    table = embed_images(tiny_scores, tiny_checkpoint, tiny_index, point, features)
    readable = table["score"].notna().to_numpy()
    expected = np.where(classifier.scores(patches.half())[readable] >= point["threshold"], "valid", "invalid")
    assert table.loc[readable, "predicted_label"].tolist() == expected.tolist()
    assert 0 < (expected == "valid").sum() < readable.sum() and pd.isna(table.loc[2, "predicted_label"])
    np.testing.assert_array_equal(table["score"], tiny_scores["tensors"]["score"].numpy())  # still the model's
    with pytest.raises(DataError, match="holds no patch vectors"):
        embed_images(tiny_scores, tiny_checkpoint, tiny_index, point, tiny_features)


def test_embed_images_refuses_an_operating_point_of_another_checkpoint(tiny_scores, tiny_checkpoint, tiny_index,
                                                                       tiny_operating_point):
    other = resealed_operating_point(tiny_operating_point, best_epoch=99)
    with pytest.raises(ValueError, match="another checkpoint"):
        embed_images(tiny_scores, tiny_checkpoint, tiny_index, other)


def test_pca_is_fitted_on_readable_training_embeddings_and_applied_to_all(small_embeddings):
    basis, variance = fit_pca_basis(small_embeddings)
    train = small_embeddings.query("split == 'train'").dropna(subset=["label", "score"])
    np.testing.assert_allclose(basis["mean"], train[embedding_columns(train)].mean().to_numpy(), rtol=1e-5, atol=1e-5)
    assert basis["fitted_on"] == len(train)
    assert variance["cumulative"].iloc[-1] == pytest.approx(1.0)
    assert variance["explained_variance_ratio"].is_monotonic_decreasing
    projection = project_embeddings(small_embeddings, basis, EmbeddingAnalysisConfig(pca_components=4))
    assert list(projection.columns[-4:]) == ["pc1", "pc2", "pc3", "pc4"]
    assert len(projection) == len(small_embeddings)
    assert projection["pc1"].isna().tolist() == small_embeddings["score"].isna().tolist()
    valid = projection.loc[projection["label"] == "valid", "pc1"]
    invalid = projection.loc[projection["label"] == "invalid", "pc1"]
    assert np.sign(valid.mean()) != np.sign(invalid.mean())  # PC1 separates the two classes


def test_clusters_match_well_separated_labels_and_agglomerative_is_sampled(small_embeddings, analysed):
    assignments, metrics, composition = analysed["assignments"], analysed["metrics"], analysed["composition"]
    labelled = small_embeddings["label"].notna() & small_embeddings["score"].notna()
    assert len(assignments) == labelled.sum()
    assert assignments["agglomerative"].notna().sum() == 100
    assert metrics["gmm"]["clusters"] == 2 and metrics["gmm"]["ari"] > 0.99 and metrics["gmm_2"]["nmi"] > 0.99
    assert metrics["agglomerative"]["ari"] > 0.99 and metrics["agglomerative"]["points"] == 100
    assert metrics["agglomerative"]["sampled"] is True and "sample of 100" in metrics["agglomerative"]["note"]
    assert set(metrics["gmm"]["bic"]) <= {"1", "2", "3", "4"} and metrics["gmm"]["purity"] == 1.0
    assert composition.groupby("method")["size"].sum().to_dict() == {
        "gmm": labelled.sum(), "gmm_2": labelled.sum(), "agglomerative": 100}
    assert (composition["valid"] + composition["invalid"] == composition["size"]).all()
    assert (composition["majority_share"] == 1.0).all()


def test_summary_measures_that_valid_is_denser(small_embeddings, analysed):
    metrics = analysed["metrics"]
    summary = summarise_embedding_space(small_embeddings, analysed["variance"], metrics)
    assert summary["denser_class"] == "valid"
    assert summary["invalid_to_valid_spread_ratio"] == pytest.approx(INVALID_SPREAD / VALID_SPREAD, rel=0.1)
    assert summary["centroid_distance"] == pytest.approx(30.0, rel=0.05)
    assert set(summary["per_split"]) == {"train", "val", "test"}
    assert summary["per_split"]["test"]["nearest_centroid_share"] == 1.0
    assert summary["per_class"]["valid"]["effective_dimensions"] > 20  # a round cloud, not a line
    assert summary["clustering"]["gmm"]["ari"] == metrics["gmm"]["ari"]


def test_figures_on_tiny_data(analysed):
    variance, projection, metrics = analysed["variance"], analysed["projection"], analysed["metrics"]
    assert len(plot_explained_variance(variance).axes) == 2
    scatter = plot_pca_scatter(projection, variance, SMALL, seed=0)
    assert isinstance(scatter, Figure) and "150 of" in scatter.axes[0].get_title()
    comparison = plot_cluster_comparison(projection, analysed["assignments"], analysed["models"], analysed["basis"],
                                         metrics, analysed["composition"], SMALL, seed=0)
    assert len(comparison.axes) == 6
    assert len(comparison.axes[1].patches) == 2 * metrics["gmm"]["clusters"]  # 1- and 2-sigma ellipses
    figure = plot_pca_scatter_3d(projection, variance, SMALL, seed=0)
    assert isinstance(figure, go.Figure)
    names = [trace.name for trace in figure.data]
    assert "valid · train" in names and "unseen kinds" in names
    assert sum(len(trace.x) for trace in figure.data) == 150
    trace = figure.data[names.index("valid · train")]
    assert trace.customdata[0][0].startswith("/images/valid/")
    assert all(key in trace.hovertemplate for key in ("customdata[0]", "score", "split", "label"))
