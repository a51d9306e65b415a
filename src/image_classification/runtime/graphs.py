"""What a batch of images computes, in eager PyTorch and as modules the ONNX exporter can trace.

Every backend takes a batch of preprocessed images, a (N, 3, size, size) float tensor, and
returns the same outputs (:data:`OUTPUT_NAMES`):

- ``score``: (N,) probability of *valid*;
- ``embedding``: (N, 50) the head's embedding (its pre-logits);
- ``features``: (N, 1280) the backbone's global-average-pooled features, which the default
  anomaly detector reads;
- ``patches``: only when the served score or its map reads patches (``patch_grid`` > 0), the
  (N, grid², C) patch vectors of :func:`~image_classification.patches.patch_grid_features`;
- ``fine_patches``: with them, the (N, side², C) fine patch vectors of
  :func:`~image_classification.fine_patches.fine_patch_features` (the patch Gaussian's map reads them).

Train's feature cache keeps :data:`FEATURE_OUTPUTS` of a frozen backbone instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from image_classification.model import (
    ClassifierHead,
    ImageClassifier,
    adapt_feature_map,
    pooled_features,
)
from image_classification.fine_patches import fine_halvings, fine_patch_features, tap_blocks
from image_classification.patches import patch_grid_features, pool_patches

INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "embedding", "features")
PATCH_OUTPUT = "patches"
FINE_OUTPUT = "fine_patches"
FEATURE_OUTPUTS = ("head_input", "pooled", PATCH_OUTPUT, FINE_OUTPUT)
Taps = tuple[tuple[int, ...], tuple[int, ...]]  # blocks kept for patch vectors, and for fine ones
NO_TAPS: Taps = ((), ())


def output_names(patch_grid: int = 0, fine: bool = True) -> list[str]:
    """The outputs a backend returns: :data:`OUTPUT_NAMES`, and :data:`PATCH_OUTPUT` with a patch grid,
    and then :data:`FINE_OUTPUT` too unless ``fine`` is false (only the patch Gaussian's map reads them)."""
    if not patch_grid:
        return list(OUTPUT_NAMES)
    return [*OUTPUT_NAMES, PATCH_OUTPUT, FINE_OUTPUT] if fine else [*OUTPUT_NAMES, PATCH_OUTPUT]


def run_blocks(blocks: nn.Sequential, images: torch.Tensor, taps: Taps) -> tuple[torch.Tensor, list, list]:
    """The last feature map of a batch, and the maps of the patch and fine taps, from one pass."""
    feature_map, tapped, fine = images, [], []
    for index, block in enumerate(blocks):
        feature_map = block(feature_map)
        if index in taps[0]:
            tapped.append(feature_map)
        if index in taps[1]:
            fine.append(feature_map)
    return feature_map, tapped, fine


def torch_features(backbone: torch.nn.Sequential, taps: Taps, images: torch.Tensor, head_input: str,
                   patch_grid: int) -> tuple[torch.Tensor, ...]:
    """Eager PyTorch: float32 head input, pooled features and (with ``taps``) patches and (with fine taps)
    fine patches of a batch."""
    feature_map, tapped, fine = run_blocks(backbone, images, taps)
    outputs = (adapt_feature_map(feature_map, head_input), pooled_features(feature_map))
    if tapped:
        outputs += (patch_grid_features(tapped, patch_grid, dtype=torch.float32),)
    if fine:
        outputs += (fine_patch_features(fine, dtype=torch.float32),)
    return outputs


def scoring_outputs(classifier: ImageClassifier, images: torch.Tensor, patch_grid: int = 0,
                    taps: Taps | None = None, fine: bool = True) -> tuple[torch.Tensor, ...]:
    """Score, embedding and pooled features of a batch through the project's own ``forward_all``;
    with ``patch_grid``, also its patch vectors and fine patch vectors, from the same pass (the blocks
    run one by one and the maps of :func:`~image_classification.fine_patches.tap_blocks`, or ``taps``, are
    kept, as the feature cache keeps them; the fine ones only when ``fine``)."""
    if not patch_grid:
        outputs = classifier.forward_all(images)
        return torch.softmax(outputs["logits"], dim=1)[:, 1], outputs["embedding"], outputs["features"]
    taps = taps if taps is not None else tap_blocks(classifier.backbone, images.shape[-1])
    head_input, pooled, *patches = torch_features(classifier.backbone, taps if fine else (taps[0], ()), images,
                                                  classifier.head_input, patch_grid)
    embedding, logits = classifier.head.embed_and_classify(head_input)
    return (torch.softmax(logits, dim=1)[:, 1], embedding, pooled, *patches)


def position_map(transform: Callable[[torch.Tensor], torch.Tensor], side: int) -> torch.Tensor:
    """``transform``, a map of a (N, C, side, side) feature map's positions that treats every channel
    alike (averaging, cutting), as one (out_positions, side²) matrix.

    Built by passing every one-hot position map through ``transform`` itself, then checked on a
    random map, so the matrix is that function and not a copy of its rules: a matrix product
    exports everywhere, whereas the TorchScript exporter cannot export adaptive average pooling
    whose windows overlap (7x7 to 4x4, 28x28 to 12x12).
    """
    positions = side**2
    probes = torch.eye(positions).reshape(positions, 1, side, side)
    matrix = transform(probes).reshape(positions, -1).T.contiguous()
    sample = torch.randn(2, 3, side, side)
    expected = transform(sample)
    if not torch.allclose((sample.flatten(2) @ matrix.T).reshape(expected.shape), expected, atol=1e-5):
        raise ValueError("the feature map transform is not a linear map of positions; the export cannot express it")
    return matrix


def head_input_map(classifier: ImageClassifier, feature_size: int) -> torch.Tensor:
    """``model.adapt_feature_map`` as one (extent², size²) matrix over the feature map's positions."""
    return position_map(lambda feature_map: adapt_feature_map(feature_map, classifier.head_input), feature_size)


def _block_sides(blocks: nn.Sequential, input_size: int) -> tuple[list[int], torch.Tensor]:
    """The side of every block's output map for ``input_size`` images, and the last map (of one zero image)."""
    sides, x = [], torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        for block in blocks:
            x = block(x)
            sides.append(x.shape[-1])
    return sides, x


class ScoringModel(nn.Module):
    """The whole classifier as one exportable graph: images in; score, embedding, pooled features
    (and, with ``patch_grid``, patch vectors, and fine patch vectors unless ``fine`` is false) out.

    The same function as :func:`scoring_outputs`, with the head's input and the patch pooling
    applied as constant matrices (:func:`position_map`): a matrix product exports everywhere, whereas
    the TorchScript exporter cannot export adaptive average pooling from 7x7 to 4x4 (its windows
    overlap). Exported models are compared with :func:`scoring_outputs`
    (:func:`~image_classification.runtime.parity.parity`).
    """

    def __init__(self, classifier: ImageClassifier, input_size: int, patch_grid: int = 0, fine: bool = True) -> None:
        super().__init__()
        self.classifier = classifier
        self.taps = tap_blocks(classifier.backbone, input_size) if patch_grid else NO_TAPS
        self.taps = self.taps if fine else (self.taps[0], ())
        sides, _ = _block_sides(classifier.backbone, input_size)
        self.register_buffer("head_input_map", head_input_map(classifier, sides[-1]), persistent=False)
        self.extent = int(round(self.head_input_map.shape[0] ** 0.5))
        for number, tap in enumerate(self.taps[0]):
            self.register_buffer(f"patch_map_{number}", position_map(lambda m: pool_patches(m, patch_grid), sides[tap]),
                                 persistent=False)
        self.halvings = fine_halvings([sides[tap] for tap in self.taps[1]]) if self.taps[1] else ()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feature_map, tapped, fine = run_blocks(self.classifier.backbone, images, self.taps)
        # -1 keeps the batch size a variable of the exported graph (unflatten would fix it)
        head_input = (feature_map.flatten(2) @ self.head_input_map.T).reshape(-1, feature_map.shape[1], self.extent,
                                                                              self.extent)
        embedding, logits = self.classifier.head.embed_and_classify(head_input)
        outputs = (torch.softmax(logits, dim=1)[:, 1], embedding, pooled_features(feature_map))
        if tapped:
            parts = [t.flatten(2) @ getattr(self, f"patch_map_{n}").T for n, t in enumerate(tapped)]
            outputs += (torch.cat(parts, dim=1).transpose(1, 2),)
        if fine:
            outputs += (fine_patch_features(fine, torch.float32, self.halvings),)
        return outputs


class FeatureModel(nn.Module):
    """A frozen backbone as one exportable graph: what train's feature cache keeps of every image.

    Images in; out: the 4x4 ``head_input`` (see :func:`~image_classification.model.adapt_feature_map`),
    the globally ``pooled`` features and, with ``patch_grid``, the (N, grid², C) ``patches`` of
    :func:`~image_classification.patches.patch_grid_features` and the ``fine_patches`` of
    :func:`~image_classification.fine_patches.fine_patch_features`, all float32, from one pass through
    the blocks. Position pooling is applied as :func:`position_map` matrices.
    """

    def __init__(self, backbone: nn.Sequential, input_size: int, head_input: str = "pooled",
                 patch_grid: int = 0) -> None:
        super().__init__()
        self.blocks = backbone.eval()
        self.taps = tap_blocks(backbone, input_size) if patch_grid else NO_TAPS
        sides, x = _block_sides(self.blocks, input_size)
        self.channels, self.grid = x.shape[1], ClassifierHead.INPUT_GRID
        self.register_buffer("head_map", position_map(lambda m: adapt_feature_map(m, head_input), sides[-1]),
                             persistent=False)
        for number, tap in enumerate(self.taps[0]):
            self.register_buffer(f"patch_map_{number}", position_map(lambda m: pool_patches(m, patch_grid), sides[tap]),
                                 persistent=False)
        self.halvings = fine_halvings([sides[tap] for tap in self.taps[1]]) if patch_grid else ()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, tapped, fine = run_blocks(self.blocks, images, self.taps)
        head_input = (x.flatten(2) @ self.head_map.T).reshape(-1, self.channels, self.grid, self.grid)
        outputs = (head_input, pooled_features(x))
        if tapped:
            parts = [t.flatten(2) @ getattr(self, f"patch_map_{n}").T for n, t in enumerate(tapped)]
            outputs += (torch.cat(parts, dim=1).transpose(1, 2), fine_patch_features(fine, torch.float32, self.halvings))
        return outputs
