"""Kedro datasets of this project."""

from .demo_images_dataset import DemoImagesDataset
from .safetensors_dataset import SafetensorsDataset

__all__ = ["DemoImagesDataset", "SafetensorsDataset"]
