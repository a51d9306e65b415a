"""Kedro datasets of this project."""

from .demo_images_dataset import DemoImagesDataset
from .image_folder_dataset import ImageFolderDataset
from .safetensors_dataset import SafetensorsDataset
from .training_state_dataset import TrainingStateDataset

__all__ = ["DemoImagesDataset", "ImageFolderDataset", "SafetensorsDataset", "TrainingStateDataset"]
