"""score: every indexed image scored once by the trained model, for every later stage to read."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
