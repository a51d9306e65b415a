"""train's frozen-backbone pass through ONNX Runtime: the same features as eager PyTorch, checked on
the first images, and a clean fallback (or a clear error) when the export cannot be trusted."""

from __future__ import annotations

import logging

import pytest
import torch

from image_classification.backbones import backbone_spec, build_backbone
from image_classification.errors import ParameterError
from image_classification.model import adapt_feature_map
from image_classification.patches import pool_patches
from image_classification.runtime.extraction import extract_backbone_features
from image_classification.runtime.graphs import FeatureModel, position_map

from ..conftest import noise_image, png_bytes, write_files

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    files = {f"{i}.png": png_bytes(noise_image(i, (64, 48))) for i in range(5)}
    files["broken.png"] = b"not an image"
    return [str(p) for p in write_files(folder, files)]


def _extract(photos, backend, **kwargs):
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights="none")
    return extract_backbone_features(backbone, photos, backbone_spec("efficientnet_lite0"), torch.device("cpu"),
                                     batch_size=4, patch_grid=7, backend=backend, **kwargs)


def test_onnx_runtime_extracts_the_same_features_as_pytorch(photos):
    eager, fast = _extract(photos, "torch"), _extract(photos, "onnxruntime")
    assert (eager["backend"], fast["backend"]) == ("torch", "onnxruntime")
    assert 0 < fast["parity"] <= 1e-4
    assert fast["errors"] == eager["errors"] and fast["errors"][-1].startswith("not an image")
    for name in ("head_input", "pooled", "patches"):
        assert fast[name].shape == eager[name].shape and fast[name].dtype == torch.float16
        difference = (fast[name].float() - eager[name].float()).abs().max()
        # both are stored float16: they may differ by one rounding step of the largest values
        assert difference <= 2e-3 * eager[name].float().abs().max(), name


def test_auto_falls_back_to_pytorch_when_the_export_differs_and_says_so(photos, caplog):
    with caplog.at_level(logging.WARNING):
        features = _extract(photos, "auto", parity_tolerance=0.0)
    assert features["backend"] == "torch"
    assert "running the pass in PyTorch" in caplog.text
    assert torch.equal(features["pooled"], _extract(photos, "torch")["pooled"])


def test_an_explicit_onnxruntime_that_cannot_be_trusted_stops_with_the_setting_named(photos):
    with pytest.raises(ParameterError, match="runtime.parity_tolerance"):
        _extract(photos, "onnxruntime", parity_tolerance=0.0)
    with pytest.raises(ParameterError, match="runtime.backend must be one of"):
        _extract(photos, "openvino")


@pytest.mark.parametrize(("head_input", "grid"), [("corner", 7), ("pooled", 12)])
def test_the_exported_graph_pools_positions_exactly_as_the_eager_functions(head_input, grid):
    torch.manual_seed(1)
    backbone = build_backbone("efficientnet_lite0", weights="none").eval()
    module = FeatureModel(backbone, 224, head_input, grid)
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        head, pooled, patches, fine = module(images)
        x, tapped, maps = images, [], {}
        for index, block in enumerate(backbone):
            x = block(x)
            maps[x.shape[-1]] = x
            if index in module.taps[0]:
                tapped.append(x)
    assert torch.allclose(head, adapt_feature_map(x, head_input), atol=1e-5)
    assert torch.allclose(pooled, x.mean((2, 3)), atol=1e-5)
    expected = torch.cat([pool_patches(t, grid) for t in tapped], 1).flatten(2).transpose(1, 2)
    assert patches.shape == (2, grid * grid, 152) and torch.allclose(patches, expected, atol=1e-4)
    # the fine patches: the stride-4 map (56 x 56) averaged over 2 x 2 blocks beside the stride-8 map (28 x 28)
    fine_expected = torch.cat([torch.nn.functional.avg_pool2d(maps[56], 2), maps[28]], 1).flatten(2).transpose(1, 2)
    assert fine.shape == (2, 28 * 28, 24 + 40) and torch.allclose(fine, fine_expected, atol=1e-4)


def test_a_transform_that_is_not_a_pooling_of_positions_is_refused():
    with pytest.raises(ValueError, match="not a linear map of positions"):
        position_map(lambda m: m * m, 4)
