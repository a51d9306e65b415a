"""data_prep: list, validate, de-duplicate and split the labelled images."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
