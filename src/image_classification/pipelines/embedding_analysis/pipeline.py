"""Wiring of the embedding_analysis pipeline."""

from kedro.pipeline import Node, Pipeline

from .nodes import (
    cluster_embeddings,
    embed_images,
    fit_pca_basis,
    plot_cluster_comparison,
    plot_explained_variance,
    plot_pca_scatter,
    plot_pca_scatter_3d,
    project_embeddings,
    score_clusters,
    summarise_embedding_space,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=embed_images,
                inputs=["scored_index", "model_checkpoint", "image_index", "operating_point", "backbone_features"],
                outputs="image_embeddings",
                name="embed_images",
            ),
            Node(
                func=fit_pca_basis,
                inputs="image_embeddings",
                outputs=["pca_basis", "pca_explained_variance"],
                name="fit_pca_basis",
            ),
            Node(
                func=project_embeddings,
                inputs=["image_embeddings", "pca_basis", "params:embedding_analysis"],
                outputs="pca_projection",
                name="project_embeddings",
            ),
            Node(
                func=cluster_embeddings,
                inputs=["image_embeddings", "params:embedding_analysis", "params:seed"],
                outputs=["cluster_assignments", "cluster_models"],
                name="cluster_embeddings",
            ),
            Node(
                func=score_clusters,
                inputs=["cluster_assignments", "image_embeddings", "cluster_models", "params:embedding_analysis",
                        "params:seed"],
                outputs=["clustering_metrics", "cluster_composition"],
                name="score_clusters",
            ),
            Node(
                func=summarise_embedding_space,
                inputs=["image_embeddings", "pca_explained_variance", "clustering_metrics"],
                outputs="embedding_space_summary",
                name="summarise_embedding_space",
            ),
            Node(
                func=plot_explained_variance,
                inputs="pca_explained_variance",
                outputs="explained_variance_figure",
                name="plot_explained_variance",
            ),
            Node(
                func=plot_pca_scatter,
                inputs=["pca_projection", "pca_explained_variance", "params:embedding_analysis", "params:seed"],
                outputs="pca_scatter_figure",
                name="plot_pca_scatter",
            ),
            Node(
                func=plot_pca_scatter_3d,
                inputs=["pca_projection", "pca_explained_variance", "params:embedding_analysis", "params:seed"],
                outputs="pca_scatter_3d",
                name="plot_pca_scatter_3d",
            ),
            Node(
                func=plot_cluster_comparison,
                inputs=["pca_projection", "cluster_assignments", "cluster_models", "pca_basis", "clustering_metrics",
                        "cluster_composition", "params:embedding_analysis", "params:seed"],
                outputs="cluster_comparison_figure",
                name="plot_cluster_comparison",
            ),
        ],
        tags="embedding_analysis",
    )
