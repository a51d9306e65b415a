"""embedding_analysis: the classifier's embedding of every image, its PCA, clusters and shape."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
