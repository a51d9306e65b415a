"""Tests for model.py: exact head layers, the head on every map size, freezing, checkpoints.

Backbones themselves are tested in test_backbones.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from image_classification.errors import ParameterError
from image_classification.backbones import backbone_spec
from image_classification.artefacts import Checkpoint
from image_classification.model import (
    ClassifierHead,
    ToModelInput,
    adapt_feature_map,
    build_model,
    preprocess_transform,
)
from image_classification.parameters.shared import ModelConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_head_shapes_and_one_pass_outputs_agree() -> None:
    head = ClassifierHead().eval()
    features = torch.randn(3, 1280, 7, 7)
    embedding, logits = head.embed_and_classify(features)
    assert embedding.shape == (3, 50) and logits.shape == (3, 2)
    torch.testing.assert_close(head(features), logits)
    torch.testing.assert_close(head.embed(features), embedding)
    torch.testing.assert_close(head.forward_head(features, pre_logits=True), embedding)
    torch.testing.assert_close(head.forward_head(features), logits)


def test_head_layers_match_the_original() -> None:
    layers = list(ClassifierHead().layers)
    expected = [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.Flatten,
                nn.Dropout, nn.ReLU, nn.Dropout, nn.Linear, nn.Linear]
    assert [type(layer) for layer in layers] == expected
    first, pool, second = layers[0], layers[1], layers[3]
    assert (first.in_channels, first.out_channels) == (1280, 1280)
    assert first.kernel_size == (2, 2) and first.stride == (2, 2) and first.bias is None
    assert pool.kernel_size == 2
    assert (second.in_channels, second.out_channels) == (1280, 320)
    assert second.kernel_size == (1, 1) and second.bias is None
    assert (layers[5].p, layers[7].p) == (0.2, 0.3)
    assert (layers[8].in_features, layers[8].out_features) == (320, 50)
    assert (layers[9].in_features, layers[9].out_features) == (50, 2)



def test_forward_all_is_one_consistent_pass() -> None:
    model = build_model("efficientnet_lite0", weights="none").eval()
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        outputs = model.forward_all(images)
        logits = model(images)
    assert outputs["features"].shape == (2, 1280)
    assert outputs["embedding"].shape == (2, 50)
    torch.testing.assert_close(outputs["logits"], logits)


def _gradients_after_backward(trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
    model = build_model("efficientnet_lite0", weights="none", trainable_blocks=trainable_blocks)
    model.train()
    model(torch.randn(2, 3, 224, 224)).sum().backward()
    return model.backbone, model.head


def test_frozen_backbone_gets_no_gradient_and_head_does() -> None:
    backbone, head = _gradients_after_backward(trainable_blocks=0)
    assert all(parameter.grad is None for parameter in backbone.parameters())
    assert all(parameter.grad is not None for parameter in head.parameters())
    assert not any(module.training for block in backbone.children() for module in block.modules())


def test_last_block_trains_when_unfrozen() -> None:
    backbone, head = _gradients_after_backward(trainable_blocks=1)
    *frozen, last = backbone.children()
    assert all(parameter.grad is not None for parameter in last.parameters())
    assert all(p.grad is None for block in frozen for p in block.parameters())
    assert all(parameter.grad is not None for parameter in head.parameters())
    assert last.training and not any(block.training for block in frozen)


def test_trainable_blocks_out_of_range() -> None:
    with pytest.raises(ValueError, match="trainable_blocks"):
        build_model("efficientnet_lite0", weights="none", trainable_blocks=99)













@pytest.mark.parametrize("augment", ["none", "flip"])
def test_preprocess_transform_output(augment: str) -> None:
    spec = backbone_spec("efficientnet_lite0")
    image = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))
    tensor = preprocess_transform(spec, augment)(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.ones_like(tensor))  # (1 - 0.5) / 0.5


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])  # one mean and std for all channels; three
def test_normalising_by_table_gives_the_bits_of_torchvisions_todtype_and_normalize(mode: str, backbone: str) -> None:
    """Every 8-bit value of every channel: the looked-up tensor is torchvision's, bit for bit, so the
    cache and every figure stay where they were."""
    spec = backbone_spec(backbone)
    rng = np.random.default_rng(0)
    values = np.stack([rng.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8).reshape(16, 16, 3)
    image = Image.fromarray(values if mode == "RGB" else values[..., 0], mode=mode)
    reference = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(mean=list(spec.mean), std=list(spec.std))])(image.convert("RGB"))
    looked_up = ToModelInput(spec.mean, spec.std)(image)
    assert looked_up.shape == (3, 16, 16) and looked_up.dtype == torch.float32
    assert torch.equal(looked_up, reference)


def _bright_corner(tensor: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the brightest cell of an 8 x 8 grid over the image."""
    cells = tensor[0].reshape(8, 28, 8, 28).mean(dim=(1, 3))
    row, column = divmod(int(cells.argmax()), 8)
    return row, column


def test_inspection_augmentation_draws_every_symmetry_of_the_square_and_jitters_light() -> None:
    """A part photographed from above may come in any of the square's eight orientations, and
    in somewhat different light: ``inspection`` shows the model all of them, and nothing else."""
    spec = backbone_spec("efficientnet_lite0")
    pixels = np.full((64, 64), 100, dtype=np.uint8)
    pixels[8:16, 16:24] = 250  # one bright cell off every axis of symmetry: each orientation puts it elsewhere
    image = Image.fromarray(pixels, mode="L")
    plain = preprocess_transform(spec)(image)
    transform = preprocess_transform(spec, "inspection")
    places, backgrounds = set(), set()
    for _ in range(200):
        tensor = transform(image)
        assert tensor.shape == (3, 224, 224)
        places.add(_bright_corner(tensor))
        backgrounds.add(round(float(tensor[0, 100:120, 100:120].mean()), 3))
    expected = {(1, 2), (1, 5), (6, 2), (6, 5), (2, 1), (5, 1), (2, 6), (5, 6)}
    assert _bright_corner(plain) == (1, 2)
    assert places == expected
    assert len(backgrounds) > 20  # brightness and contrast differ from draw to draw
    # mildly: ColorJitter(0.2, 0.2) scales brightness and contrast by 0.8-1.2, so the grey background
    # (100 of 255) stays within 100 * 0.8 * 0.8 .. 100 * 1.2 * 1.2 grey levels, far from white or black
    low, high = ((100 * f / 255 - spec.mean[0]) / spec.std[0] for f in (0.8 * 0.8 - 0.02, 1.2 * 1.2 + 0.02))
    assert all(low <= b <= high for b in backgrounds), (low, high, sorted(backgrounds)[:3], sorted(backgrounds)[-3:])


def test_photo_augmentation_flips_and_shifts_by_at_most_an_eighth_mirroring_the_edge() -> None:
    """A photo's subject may sit anywhere and face either way: ``photo`` shows it flipped and moved
    by up to an eighth of the side, the gap filled with the mirrored edge rather than black."""
    from image_classification.model import RandomShift

    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[:, 16:] = np.arange(16, dtype=np.uint8)[None, :] * 10 + 50  # a ramp on the right half
    image = Image.fromarray(pixels, mode="L")
    shift = RandomShift()
    offsets = set()
    for _ in range(300):
        shifted = np.asarray(shift(image))
        assert shifted.shape == (32, 32)
        column = int(np.argmax(shifted[0] > 0))  # where the ramp starts now: shifted by up to 4 of 32
        offsets.add(column - 16)
        assert shifted.min() == 0 and shifted.max() > 0
    assert offsets == set(range(-4, 5))
    transform = preprocess_transform(backbone_spec("efficientnet_lite0"), "photo")
    mirrored = {bool(transform(image)[0, :, :50].mean() > transform(image)[0, :, -50:].mean()) for _ in range(60)}
    assert mirrored == {True, False}  # the ramp ends up on either side


def test_an_unknown_augmentation_is_refused_with_the_choices() -> None:
    with pytest.raises(ParameterError, match="train.augment must be one of none, flip, inspection, photo"):
        preprocess_transform(backbone_spec("efficientnet_lite0"), "rotate")


@pytest.mark.parametrize("size", [4, 7, 9, 12])
def test_pooled_head_input_fits_the_head_on_any_map(size: int) -> None:
    feature_map = torch.randn(2, 1280, size, size)
    head_input = adapt_feature_map(feature_map, "pooled")
    assert head_input.shape == (2, 1280, ClassifierHead.INPUT_GRID, ClassifierHead.INPUT_GRID)
    assert torch.isclose(head_input[0, 0, 0, 0], feature_map[0, 0, : -(-size // 4), : -(-size // 4)].mean())
    assert ClassifierHead().eval()(head_input).shape == (2, 2)


def test_the_raw_lite2_map_does_not_fit_the_head() -> None:
    """Why adapt_feature_map exists: the head's layers leave 2x2 of a 9x9 map, Linear(320) fails."""
    assert ClassifierHead.input_extent(9) == 8 and ClassifierHead.input_extent(7) == 4
    with pytest.raises(RuntimeError):
        ClassifierHead().eval()(torch.randn(1, 1280, 9, 9))


def test_corner_on_a_9x9_map_is_a_clear_parameter_error() -> None:
    with pytest.raises(ParameterError, match="9x9.*head_input=pooled"):
        adapt_feature_map(torch.randn(1, 1280, 9, 9), "corner")
    with pytest.raises(ParameterError, match="efficientnet_lite2.*head_input=pooled"):
        ModelConfig(backbone="efficientnet_lite2", weights="none", head_input="corner")
    with pytest.raises(ParameterError, match="efficientnet_lite2"):
        build_model("efficientnet_lite2", weights="none", head_input="corner")
    assert adapt_feature_map(torch.randn(1, 1280, 7, 7), "corner").shape == (1, 1280, 4, 4)


def test_lite2_classifier_and_its_checkpoint_round_trip() -> None:
    spec = backbone_spec("efficientnet_lite2")
    model = build_model("efficientnet_lite2", weights="none").eval()
    images = torch.randn(2, 3, spec.input_size, spec.input_size)
    payload = Checkpoint.from_model(model, backbone="efficientnet_lite2", head={"in_channels": 1280}).to_payload()
    restored = Checkpoint.from_payload(payload).model()
    with torch.inference_mode():
        outputs, again = model.forward_all(images), restored.forward_all(images)
    assert outputs["features"].shape == (2, 1280) and outputs["logits"].shape == (2, 2)
    for name in outputs:
        torch.testing.assert_close(again[name], outputs[name])
    assert restored.head_input == "pooled"
