"""evaluate: the operating point chosen on validation, measured on test beside a baseline."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
