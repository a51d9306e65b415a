"""The classifier on top of a backbone: its head, the whole model, its config and checkpoint.

Backbones (which exist, their input size and normalisation, their weights) live in the
:mod:`image_classification.backbones` registry. Each maps an image of its ``input_size`` to a
(N, 1280, h, w) map: 7x7 for ``efficientnet_lite0`` and ``mobilenet_v2`` at 224 px, 9x9 for
``efficientnet_lite2`` at 260 px. The head always reads a 4x4 grid of it (see
:func:`adapt_feature_map`). The classifier follows timm's anatomy: ``forward_features`` runs
the backbone, ``forward_head(features, pre_logits=True)`` returns the 50-d embedding.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from image_classification.backbones import (
    BackboneSpec,
    backbone_spec,
    build_backbone,
)
from image_classification.errors import ParameterError

logger = logging.getLogger(__name__)


class ToModelInput(nn.Module):
    """A PIL image (RGB, or L for grayscale) to the normalised (3, H, W) float tensor: scaled to [0, 1],
    then ``(x - mean) / std`` per channel. A grayscale image is broadcast to three channels by the
    normalisation itself, so its pixels are converted, resized and scaled once, not three times:
    the same tensor as converting it to RGB first.

    An 8-bit pixel has 256 values, so each channel's 256 results are computed once, with the same
    float32 operations in the same order, and the image is normalised by looking its pixels up in that
    table: one pass over the pixels instead of four, the same bits (about half the time on 224 px)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), persistent=False)
        levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
        self._table = self.normalise(levels).view(3, 256).numpy()  # (3, 256): channel, 8-bit value
        self._same_table = [bool(np.array_equal(row, self._table[0])) for row in self._table]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W), C = 1 or 3, to the normalised float32 (3, H, W)."""
        # the operations of torchvision's ToDtype(scale=True) and Normalize, in their order: the same bits
        return (pixels.to(torch.float32).mul_(1.0 / 255) - self.mean).div_(self.std)

    def forward(self, image) -> torch.Tensor:
        if not isinstance(image, Image.Image) or image.mode not in ("RGB", "L"):
            return self.normalise(v2.functional.pil_to_tensor(image))
        pixels = np.asarray(image)  # uint8 (H, W) or (H, W, 3)
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
        for channel in range(3):
            if pixels.ndim == 2 and channel and self._same_table[channel]:
                out[channel] = out[0]  # a grayscale image under one normalisation for all channels: a copy
            else:
                # 8-bit indices into 256 entries never leave the table; mode wrap skips numpy's checked,
                # buffered path (the default, raise, checks every index)
                np.take(self._table[channel], pixels if pixels.ndim == 2 else pixels[..., channel],
                        out=out[channel], mode="wrap")
        return torch.from_numpy(out)


AUGMENTATIONS = ("none", "flip", "inspection", "photo")
"""What fine-tuning may do to a training image (``train.augment``): ``none``; ``flip``, a random
horizontal flip (for photos, where up is up); ``inspection``, for photos of parts taken from above:
a random one of the eight flips and quarter turns of the square, then mild brightness and contrast
jitter (factors 0.8-1.2), because a part's defect is a defect in any orientation and light; ``photo``,
a random horizontal flip and a random shift of up to an eighth of the side (the edge mirrored into the
gap), for photos whose subject may sit anywhere in the frame."""


class RandomShift(nn.Module):
    """Shift a PIL image by up to ``fraction`` of its sides at random, mirroring the edge into the gap:
    pad both sides by that much (reflected), then crop a window of the original size at random."""

    def __init__(self, fraction: float = 0.125) -> None:
        super().__init__()
        self.fraction = fraction

    def forward(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        pad_x, pad_y = round(width * self.fraction), round(height * self.fraction)
        if not (pad_x or pad_y):
            return image
        left, top = (int(torch.randint(2 * pad + 1, ())) for pad in (pad_x, pad_y))
        padded = v2.functional.pad(image, [pad_x, pad_y], padding_mode="reflect")
        return padded.crop((left, top, left + width, top + height))


class RandomQuarterTurn(nn.Module):
    """Turn a PIL image by a random multiple of 90 degrees (0, 90, 180 or 270): with a random
    horizontal flip, any of the square's eight symmetries."""

    TURNS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)

    def forward(self, image: Image.Image) -> Image.Image:
        turn = self.TURNS[int(torch.randint(len(self.TURNS), ()))]
        return image if turn is None else image.transpose(turn)


def augmentation(augment: str) -> list[nn.Module]:
    """The random steps of ``augment`` (see :data:`AUGMENTATIONS`), applied to a PIL image."""
    if augment not in AUGMENTATIONS:
        raise ParameterError(f"train.augment must be one of {', '.join(AUGMENTATIONS)} (true: flip, false: none), "
                             f"got '{augment}'")
    if augment == "flip":
        return [v2.RandomHorizontalFlip()]
    if augment == "inspection":
        return [v2.RandomHorizontalFlip(), RandomQuarterTurn(), v2.ColorJitter(brightness=0.2, contrast=0.2)]
    if augment == "photo":
        return [v2.RandomHorizontalFlip(), RandomShift()]
    return []


def preprocess_transform(spec: BackboneSpec, augment: str = "none") -> v2.Compose:
    """Turn an RGB (or grayscale L) PIL image into the normalised (3, size, size) float tensor a backbone expects.

    Images are resized straight to the square input size (small images such as 32 x 32 are
    upsampled). The random steps of ``augment`` (see :data:`AUGMENTATIONS`) come first.
    """
    steps = augmentation(augment) + [
        v2.Resize((spec.input_size, spec.input_size), antialias=True),
        ToModelInput(spec.mean, spec.std),
    ]
    return v2.Compose(steps)


def pooled_features(feature_map: torch.Tensor) -> torch.Tensor:
    """Global-average-pool a (N, C, H, W) feature map to (N, C)."""
    return feature_map.mean(dim=(2, 3))


HEAD_INPUTS = ("pooled", "corner")


def adapt_feature_map(feature_map: torch.Tensor, head_input: str = "pooled") -> torch.Tensor:
    """The (N, C, 4, 4) part of a backbone's (N, C, H, W) map the head is given.

    The head needs a 4x4 grid (:attr:`ClassifierHead.INPUT_GRID`). The original head floors
    its way from 7x7 down to 1x1, so on a 224 px image it reads only the top-left 4x4 of the
    map: the bottom and right 43% of every picture never reach it (``"corner"``, the original
    behaviour, defined only for maps whose floors leave exactly that 4x4, i.e. 4x4 to 7x7).
    ``"pooled"`` averages the whole map, of any size (9x9 for efficientnet_lite2), down to the
    4x4 grid, so the unchanged head sees the whole picture: it ranks CIFAR-10 photos better
    (docs/decisions/0002).
    """
    grid = ClassifierHead.INPUT_GRID
    if head_input == "pooled":
        return nn.functional.adaptive_avg_pool2d(feature_map, grid)
    if head_input == "corner":
        check_corner_fits(feature_map.shape[-1])
        return feature_map[..., :grid, :grid]
    raise ParameterError(f"model.head_input must be one of {HEAD_INPUTS}, got '{head_input}'")


def check_corner_fits(feature_size: int, backbone: str = "this backbone") -> None:
    """``ParameterError`` unless the original head's corner of a ``feature_size`` map is 4x4."""
    extent = ClassifierHead.input_extent(feature_size)
    if extent != ClassifierHead.INPUT_GRID:
        raise ParameterError(
            f"model.head_input 'corner' feeds the head the top-left {ClassifierHead.INPUT_GRID}x"
            f"{ClassifierHead.INPUT_GRID} that the original head reads of a 7x7 map, but "
            f"{backbone}'s map is {feature_size}x{feature_size}: the original head would read "
            f"{extent}x{extent} of it and not fit its Linear layer. Use model.head_input=pooled."
        )


class ClassifierHead(nn.Module):
    """The classifier on a 4x4 grid of backbone features (see :func:`adapt_feature_map`; it also
    takes a raw 4x4 to 7x7 map); its ``Linear(320, 50)`` output is the embedding.

    Layers, in order: Conv2d(k=2, s=2, no bias) -> MaxPool2d(2) -> ReLU -> Conv2d(k=1, no bias)
    -> Flatten -> Dropout -> ReLU -> Dropout -> Linear (embedding) -> Linear (logits).

    With ``fine_classes`` > 0 a second ``Linear(embedding_dim, fine_classes)`` (``fine``) reads
    the same embedding and is trained on the images' finer classes (airplane, truck, cat, ...)
    next to valid/invalid: an auxiliary output that makes the embedding tell the classes apart,
    which zero_shot's detectors need to see unseen kinds as new. The valid/invalid logits, and
    everything computed from them, do not read it.
    """

    def __init__(
        self,
        in_channels: int = 1280,
        hidden_channels: int = 320,
        embedding_dim: int = 50,
        num_classes: int = 2,
        dropout: tuple[float, float] = (0.2, 0.3),
        fine_classes: int = 0,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=2, stride=2, bias=False),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
            nn.Flatten(),
            nn.Dropout(dropout[0]),
            nn.ReLU(),
            nn.Dropout(dropout[1]),
            nn.Linear(hidden_channels, embedding_dim),
            nn.Linear(embedding_dim, num_classes),
        )
        self.fine = nn.Linear(embedding_dim, fine_classes) if fine_classes else None

    INPUT_GRID = 4
    """The input side the head needs: its Linear(320, 50) requires a 1x1 map after the MaxPool."""

    @staticmethod
    def input_extent(feature_size: int) -> int:
        """How many rows (and columns) of a raw ``feature_size`` map the head's layers read.

        The stride-2 convolution and the 2x2 max-pool both floor their output size, so on the
        7x7 map of a 224 px image the head sees only its top-left 4x4 corner; on a 9x9 map it
        would read 8x8 and end 2x2, which its Linear layer cannot take. That is why every map
        goes through :func:`adapt_feature_map` first, and why cached features keep only the
        4x4 head input (the head's output is the same and the cache is 3x smaller).
        """
        convolved = (feature_size - 2) // 2 + 1
        pooled = (convolved - 2) // 2 + 1
        return 4 * pooled

    def _patch_convolution(self, features: torch.Tensor) -> torch.Tensor:
        """The first layer, computed as one matrix product over its non-overlapping 2x2 patches.

        Same weights and the same result as ``nn.Conv2d(k=2, s=2)`` (it is that convolution),
        but its backward pass runs about twice as fast on CPUs as the convolution kernel's,
        and training time on cached features is dominated by this layer.
        """
        conv = self.layers[0]
        k = conv.kernel_size[0]
        n, c, h, w = features.shape
        rows, cols = h // k, w // k
        patches = (
            features[:, :, : rows * k, : cols * k]
            .reshape(n, c, rows, k, cols, k)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(n * rows * cols, c * k * k)
        )
        out = patches @ conv.weight.reshape(conv.out_channels, -1).t()
        return out.reshape(n, rows, cols, conv.out_channels).permute(0, 3, 1, 2)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The (N, embedding_dim) embedding: every layer but the last."""
        return self.layers[1:-1](self._patch_convolution(features))

    def embed_and_classify(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding and the (N, num_classes) logits computed from it, in one pass."""
        embedding = self.embed(features)
        return embedding, self.layers[-1](embedding)

    def forward_train(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The valid/invalid logits and the fine-class logits (None without ``fine_classes``)."""
        embedding = self.embed(features)
        return self.layers[-1](embedding), None if self.fine is None else self.fine(embedding)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The embedding if ``pre_logits`` else the logits (timm's convention)."""
        embedding = self.embed(features)
        return embedding if pre_logits else self.layers[-1](embedding)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The (N, num_classes) logits."""
        return self.layers[-1](self.embed(features))


class ImageClassifier(nn.Module):
    """A backbone followed by a :class:`ClassifierHead`, with a freezable backbone."""

    def __init__(self, backbone: nn.Module, head: ClassifierHead, head_input: str = "pooled") -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_input = head_input
        self.frozen_blocks = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's (N, C, H, W) feature map."""
        return self.backbone(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The embedding if ``pre_logits`` else the logits, from a feature map."""
        return self.head.forward_head(adapt_feature_map(features, self.head_input), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, num_classes) logits of a batch of images."""
        return self.head(adapt_feature_map(self.forward_features(x), self.head_input))

    def forward_all(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled backbone features, embedding and logits, from one pass over the images."""
        feature_map = self.forward_features(x)
        embedding, logits = self.head.embed_and_classify(adapt_feature_map(feature_map, self.head_input))
        return {"features": pooled_features(feature_map), "embedding": embedding, "logits": logits}

    def frozen_part(self) -> nn.Sequential:
        """The frozen backbone blocks, in order: the part fine-tuning never changes."""
        return nn.Sequential(*self._backbone_blocks()[: self.frozen_blocks])

    def trainable_part(self) -> TrainablePart:
        """The trainable blocks and the head, as one module reading the frozen part's output."""
        return TrainablePart(self)

    def _backbone_blocks(self) -> list[nn.Module]:
        return list(self.backbone.children())

    def freeze_backbone(self, trainable_blocks: int = 0) -> None:
        """Freeze every backbone block except the last ``trainable_blocks`` top-level ones.

        Frozen blocks get ``requires_grad=False`` and stay in eval mode (batch-norm statistics
        and stochastic depth fixed) even after ``model.train()``.
        """
        blocks = self._backbone_blocks()
        if not 0 <= trainable_blocks <= len(blocks):
            raise ParameterError(
                f"trainable_blocks must be between 0 and {len(blocks)} (the backbone's blocks), "
                f"got {trainable_blocks}"
            )
        self.frozen_blocks = len(blocks) - trainable_blocks
        for index, block in enumerate(blocks):
            for parameter in block.parameters():
                parameter.requires_grad = index >= self.frozen_blocks
        self.train(self.training)
        logger.info(
            "Backbone: %d of %d blocks frozen, %d trainable",
            self.frozen_blocks, len(blocks), trainable_blocks,
        )

    def train(self, mode: bool = True) -> ImageClassifier:
        """Set train/eval mode, keeping frozen backbone blocks in eval mode."""
        super().train(mode)
        for block in self._backbone_blocks()[: self.frozen_blocks]:
            block.eval()
        return self


class TrainablePart(nn.Module):
    """What fine-tuning trains of an :class:`ImageClassifier`: its trainable backbone blocks (as
    ``backbone``, so the optimiser gives them the backbone's learning rate) and its head, sharing
    their parameters with the classifier. Its input is the frozen blocks' output, so the frozen part
    can run anywhere (ONNX Runtime), without gradients."""

    def __init__(self, classifier: ImageClassifier) -> None:
        super().__init__()
        self.backbone = nn.Sequential(*classifier._backbone_blocks()[classifier.frozen_blocks:])
        self.head = classifier.head
        self.head_input = classifier.head_input

    def forward(self, frozen_output: torch.Tensor) -> torch.Tensor:
        """The (N, num_classes) logits."""
        return self.head(adapt_feature_map(self.backbone(frozen_output), self.head_input))

    def forward_train(self, frozen_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The valid/invalid logits and the head's fine-class logits (see :class:`ClassifierHead`)."""
        return self.head.forward_train(adapt_feature_map(self.backbone(frozen_output), self.head_input))


def build_model(
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    weights_path: str | None = None,
    trainable_blocks: int = 0,
    head_input: str = "pooled",
) -> ImageClassifier:
    """Build a backbone, frozen but for its last ``trainable_blocks``, topped by the head."""
    spec = backbone_spec(backbone)
    if head_input == "corner":
        check_corner_fits(spec.feature_size, backbone)
    model = ImageClassifier(
        build_backbone(backbone, weights=weights, weights_path=weights_path),
        ClassifierHead(in_channels=spec.feature_channels),
        head_input=head_input,
    )
    model.freeze_backbone(trainable_blocks)
    return model
