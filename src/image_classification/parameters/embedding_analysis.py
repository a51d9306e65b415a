"""Parameters of the embedding_analysis pipeline (``conf/base/parameters_embedding_analysis.yml``)."""

from __future__ import annotations

from dataclasses import dataclass

from image_classification.clustering import COVARIANCE_TYPES, LINKAGES
from image_classification.errors import ParameterError


@dataclass(frozen=True)
class EmbeddingAnalysisConfig:
    """Settings of the embedding_analysis stage; checked when parameters load, before any work."""

    pca_components: int = 3
    gmm_components: tuple[int, int] = (1, 8)
    gmm_covariance_type: str = "full"
    gmm_reg_covar: float = 1e-6
    gmm_bic_patience: int | None = 2
    gmm_max_samples: int = 5_000
    agglomerative_clusters: int = 2
    agglomerative_linkage: str = "ward"
    agglomerative_max_samples: int = 5_000
    silhouette_sample_size: int = 3_000
    figure_max_points: int = 5_000

    def __post_init__(self) -> None:
        low, high = (int(value) for value in self.gmm_components)
        object.__setattr__(self, "gmm_components", (low, high))
        if not 1 <= low <= high:
            raise ParameterError(f"embedding_analysis.gmm_components must be [low, high] with 1 <= low <= high, got {self.gmm_components}")
        if self.gmm_covariance_type not in COVARIANCE_TYPES:
            raise ParameterError(f"embedding_analysis.gmm_covariance_type must be one of {COVARIANCE_TYPES}, got '{self.gmm_covariance_type}'")
        if self.agglomerative_linkage not in LINKAGES:
            raise ParameterError(f"embedding_analysis.agglomerative_linkage must be one of {LINKAGES}, got '{self.agglomerative_linkage}'")
        if self.pca_components < 3:
            raise ParameterError(f"embedding_analysis.pca_components must be at least 3 (the 3D plot), got {self.pca_components}")
        if self.gmm_bic_patience is not None and self.gmm_bic_patience < 1:
            raise ParameterError(f"embedding_analysis.gmm_bic_patience must be at least 1 or null (try every k), got {self.gmm_bic_patience}")
        for name in ("gmm_max_samples", "agglomerative_clusters",
                     "agglomerative_max_samples", "silhouette_sample_size", "figure_max_points"):
            if int(getattr(self, name)) < 2:
                raise ParameterError(f"embedding_analysis.{name} must be at least 2, got {getattr(self, name)}")
