"""zero_shot: flag images unlike anything the model was trained on."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
