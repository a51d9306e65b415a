"""predict: score new, unlabelled images with the trained model, its threshold and the anomaly flag."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
