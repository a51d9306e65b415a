"""Tests for model.py: exact head layers, backbone shapes, freezing, real ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from image_classification import model as model_module
from image_classification.model import (
    BACKBONES,
    BackboneUnavailableError,
    ClassifierHead,
    backbone_spec,
    build_backbone,
    build_model,
    imagenet_classifier,
    pooled_features,
    preprocess_transform,
)

SHARED_MOBILENET_V2 = (
    Path(__file__).resolve().parents[2] / "shared/weights/mobilenet_v2_imagenet_coral_tflite.pth"
)
ESPRESSO = 967
DOMESTIC_CATS = range(281, 286)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _top5(classifier: nn.Module, backbone: str, image: np.ndarray) -> list[int]:
    batch = preprocess_transform(backbone_spec(backbone))(Image.fromarray(image)).unsqueeze(0)
    with torch.inference_mode():
        return classifier(batch).topk(5).indices[0].tolist()


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


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_random_backbone_feature_shape(name: str) -> None:
    backbone = build_backbone(name, weights="none").eval()
    with torch.inference_mode():
        features = backbone(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, BACKBONES[name].feature_channels, 7, 7)
    assert not torch.isnan(features).any()
    assert pooled_features(features).shape == (2, 1280)


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


def test_efficientnet_lite0_recognises_photos() -> None:
    classifier = imagenet_classifier("efficientnet_lite0")
    assert ESPRESSO in _top5(classifier, "efficientnet_lite0", data.coffee())
    assert set(DOMESTIC_CATS) & set(_top5(classifier, "efficientnet_lite0", data.chelsea()))


def test_efficientnet_lite0_backbone_is_the_classifiers_features() -> None:
    backbone = build_backbone("efficientnet_lite0").eval()
    classifier = imagenet_classifier("efficientnet_lite0")
    for (key, value), expected in zip(
        backbone.state_dict().items(), classifier.features.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), key


def test_mobilenet_v2_from_weights_path_recognises_coffee() -> None:
    if not SHARED_MOBILENET_V2.is_file():
        pytest.skip(f"offline MobileNetV2 weights not found at {SHARED_MOBILENET_V2}")
    classifier = imagenet_classifier("mobilenet_v2", weights_path=str(SHARED_MOBILENET_V2))
    assert ESPRESSO in _top5(classifier, "mobilenet_v2", data.coffee())
    backbone = build_backbone("mobilenet_v2", weights_path=str(SHARED_MOBILENET_V2))
    assert backbone.state_dict().keys() == classifier.features.state_dict().keys()


def test_mobilenet_v2_without_cache_says_how_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(BackboneUnavailableError) as caught:
        build_backbone("mobilenet_v2")
    message = str(caught.value)
    for hint in ("weights_path", "efficientnet_lite0", "mobilenet_v2-b0353104.pth",
                 str(tmp_path / "checkpoints"), "IMAGENET1K_V1"):
        assert hint in message


def test_mobilenet_v2_cache_file_with_wrong_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mobilenet_v2-b0353104.pth").write_bytes(b"truncated")
    with pytest.raises(BackboneUnavailableError, match="sha256 prefix b0353104"):
        build_backbone("mobilenet_v2")


def test_missing_weights_path(tmp_path: Path) -> None:
    with pytest.raises(BackboneUnavailableError, match="does not exist"):
        build_backbone("mobilenet_v2", weights_path=str(tmp_path / "absent.pth"))


def test_weights_path_of_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "lite0.pth"
    torch.save(build_backbone("efficientnet_lite0", weights="none").state_dict(), path)
    with pytest.raises(BackboneUnavailableError, match="does not match the mobilenet_v2"):
        build_backbone("mobilenet_v2", weights_path=str(path))


def test_weights_path_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneUnavailableError, match="state dict"):
        build_backbone("mobilenet_v2", weights_path=str(path))


def test_unknown_backbone_names_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match="resnet9000.*efficientnet_lite0.*mobilenet_v2"):
        build_model("resnet9000")
    with pytest.raises(ValueError, match="resnet9000"):
        backbone_spec("resnet9000")


def test_unknown_weights_value() -> None:
    with pytest.raises(ValueError, match="'imagenet21k'"):
        build_backbone("efficientnet_lite0", weights="imagenet21k")


def test_sha256_mismatch_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "EFFICIENTNET_LITE0_SHA256", "0" * 64)
    with pytest.raises(BackboneUnavailableError, match="sha256"):
        build_backbone("efficientnet_lite0")


@pytest.mark.parametrize("train", [False, True])
def test_preprocess_transform_output(train: bool) -> None:
    spec = backbone_spec("efficientnet_lite0")
    image = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))
    tensor = preprocess_transform(spec, train=train)(image)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor, torch.ones_like(tensor))  # (1 - 0.5) / 0.5
