"""train: backbone features once per image, then the classifier head trained on them."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
