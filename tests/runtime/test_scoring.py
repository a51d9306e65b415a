"""Tests for runtime/scoring.py and what the feature cache relies on: the head reads only a corner of the
map, its patch-GEMM first layer is the convolution, and scoring leaves the model as it was.
(Checkpoints are tested in test_artefacts.py, scoring the index in pipelines/score.)"""

from __future__ import annotations


import pytest
import torch

from image_classification.backbones import backbone_spec
from image_classification.model import ClassifierHead, build_model
from image_classification.runtime.scoring import model_outputs

from ..conftest import noise_image, png_bytes, write_files

BACKBONE = "efficientnet_lite0"
HEAD = {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
RUNTIME = {"device": "cpu", "threads": None, "batch_size": 4, "workers": 0}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded weights; one thread is faster than two spin-waiting on CPUs shared with other work."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the head


def test_input_extent():
    assert ClassifierHead.input_extent(7) == 4
    assert ClassifierHead.input_extent(4) == 4
    assert ClassifierHead.input_extent(5) == 4
    assert ClassifierHead.input_extent(8) == 8


def test_the_head_reads_only_the_corner_the_cache_keeps():
    head = ClassifierHead().eval()
    feature_map = torch.randn(3, 1280, 7, 7)
    corner = feature_map[..., :4, :4]
    with torch.inference_mode():
        full_embedding, full_logits = head.embed_and_classify(feature_map)
        corner_embedding, corner_logits = head.embed_and_classify(corner)
        changed = feature_map.clone()
        changed[..., 4:, :] = 1e3  # the rows and columns outside the corner do not matter
        changed[..., :, 4:] = -1e3
        changed_logits = head(changed)
    torch.testing.assert_close(corner_embedding, full_embedding, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(corner_logits, full_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(changed_logits, full_logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [7, 4])
def test_the_patch_gemm_forward_is_the_plain_sequential(size):
    head = ClassifierHead().eval()
    features = torch.randn(5, 1280, size, size)
    with torch.inference_mode():
        torch.testing.assert_close(head(features), head.layers(features), rtol=0, atol=1e-5)
        torch.testing.assert_close(head.embed(features), head.layers[:-1](features), rtol=0, atol=1e-5)


def test_the_patch_gemm_gives_the_convolutions_gradient():
    head = ClassifierHead().eval()
    features = torch.randn(4, 1280, 4, 4)
    head(features).sum().backward()
    patch_gradient = head.layers[0].weight.grad.clone()
    head.zero_grad()
    head.layers(features).sum().backward()
    torch.testing.assert_close(patch_gradient, head.layers[0].weight.grad, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- scoring


def test_model_outputs_leaves_the_models_parameters_as_they_were(tmp_path):
    # fit() scores the validation images through model_outputs between epochs, and fused Adam
    # pairs each moment with its parameter by memory order: a scoring pass that turned the
    # weights channels_last would silently scramble the head's optimiser state
    paths = write_files(tmp_path, {"a.png": png_bytes(noise_image(1))})
    model = build_model(BACKBONE, weights="none")
    assert all(p.is_contiguous() for p in model.parameters())
    model_outputs(model, [str(p) for p in paths], backbone_spec(BACKBONE), torch.device("cpu"))
    assert [name for name, p in model.named_parameters() if not p.is_contiguous()] == []


def test_head_input_corner_is_the_original_design_and_pooled_sees_the_whole_map():
    from image_classification.model import ImageClassifier, adapt_feature_map

    torch.manual_seed(0)
    head = ClassifierHead().eval()
    feature_map = torch.randn(3, 1280, 7, 7)
    with torch.no_grad():
        original = head.layers(feature_map)  # the plain layer stack on the raw 7x7 map
        corner = head(adapt_feature_map(feature_map, "corner"))
        pooled = head(adapt_feature_map(feature_map, "pooled"))
        changed = feature_map.clone()
        changed[..., 5:, 5:] += 10.0  # the bottom-right of the picture
        assert torch.allclose(corner, original, atol=1e-5)
        assert torch.equal(head(adapt_feature_map(changed, "corner")), corner)  # the original never sees it
        assert not torch.allclose(head(adapt_feature_map(changed, "pooled")), pooled)
    backbone = torch.nn.Sequential(torch.nn.Identity())
    for mode, expected in (("corner", corner), ("pooled", pooled)):
        with torch.no_grad():
            assert torch.allclose(ImageClassifier(backbone, head, head_input=mode).eval()(feature_map), expected, atol=1e-6)
    with pytest.raises(ValueError, match="head_input"):
        adapt_feature_map(feature_map, "center")


@pytest.mark.parametrize("mode", ["L", "1", "I;16"])
def test_a_grayscale_image_is_preprocessed_once_and_gives_the_same_tensor_as_its_rgb_copy(tmp_path, mode):
    import numpy as np
    from PIL import Image

    from image_classification.images import load_rgb
    from image_classification.image_files import ImageLimits
    from image_classification.runtime.loader import ImageFiles

    pixels = np.asarray(noise_image(3, (300, 300), mode="L"))
    gray = Image.fromarray(pixels).convert(mode) if mode != "I;16" else Image.fromarray(pixels.astype(np.uint16) * 257)
    rgb = load_rgb(str(write_files(tmp_path, {"gray.png": png_bytes(gray)})[0]), ImageLimits(min_side=1))
    paths = write_files(tmp_path, {"gray.png": png_bytes(gray), "rgb.png": png_bytes(rgb)})
    assert load_rgb(str(paths[0]), ImageLimits(min_side=1), keep_gray=True).mode == "L"
    dataset = ImageFiles([str(p) for p in paths], backbone_spec(BACKBONE))
    (from_gray, reason), (from_rgb, _) = dataset[0], dataset[1]
    assert not reason and from_gray.shape == (3, 224, 224)
    assert torch.equal(from_gray, from_rgb)  # bit for bit: the cache and the figures do not move
