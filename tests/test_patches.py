"""Patch evidence: where the maps are tapped, what the cache holds, and that the score finds a local defect."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from image_classification.artefacts import FeatureCache
from image_classification.backbones import backbone_spec, build_backbone
from image_classification.errors import DataError, ParameterError
from image_classification.runtime.extraction import extract_backbone_features
from image_classification.parameters.shared import ModelConfig
from image_classification.parameters.train import TrainConfig
from image_classification.patches import (
    PatchClassifier,
    PatchMemory,
    bytes_per_image,
    greedy_coreset,
    grid_of,
    patch_blocks,
    patch_grid_features,
    position_moments,
)
from image_classification.pipelines.train.nodes import extract_features

from .conftest import noise_image, png_bytes, write_files


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("name", "expected", "channels"), [
    ("efficientnet_lite0", (3, 5), (40, 112)),
    ("mobilenet_v2", (6, 13), (32, 96)),
])
def test_the_last_stride_8_and_16_blocks_are_tapped(name, expected, channels):
    backbone = build_backbone(name, weights="none")
    assert patch_blocks(backbone, 224) == expected
    x = torch.zeros(1, 3, 224, 224)
    with torch.inference_mode():
        for index, block in enumerate(backbone):
            x = block(x)
            if index in expected:
                assert x.shape[1:] == (channels[expected.index(index)], 224 // (8 if index == expected[0] else 16),
                                       224 // (8 if index == expected[0] else 16))


def test_finding_the_blocks_leaves_every_block_in_the_mode_it_was_in():
    """A slice of a backbone (a new nn.Sequential, in training mode) over blocks in eval mode, as a
    backbone with frozen blocks is: its blocks must not come back in training mode, which would let
    batch norm learn statistics from the next images."""
    backbone = build_backbone("efficientnet_lite0", weights="none").eval()
    part = backbone[:-1]
    assert part.training and not any(module.training for module in backbone.modules())
    patch_blocks(part, 224)
    assert part.training and not any(module.training for module in backbone.modules())
    backbone.train()
    patch_blocks(backbone, 224)
    assert all(module.training for module in backbone.modules())


def test_patch_vectors_are_one_grid_of_both_maps_in_float16():
    stride8, stride16 = torch.randn(2, 40, 28, 28), torch.randn(2, 112, 14, 14)
    patches = patch_grid_features([stride8, stride16], grid=7)
    assert patches.shape == (2, 49, 152) and patches.dtype == torch.float16
    # the top-left patch is the 3x3-smoothed maps averaged over the top-left cell of the grid
    smoothed = torch.nn.functional.avg_pool2d(stride16, 3, 1, 1)[0, :, :2, :2].mean((1, 2))
    assert torch.allclose(patches[0, 0, 40:].float(), smoothed, atol=1e-2)
    assert bytes_per_image(14, 152) == 14 * 14 * 152 * 2


def test_the_coreset_covers_every_cluster_before_repeating_one():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
    bank = torch.cat([c + torch.randn(250, 2, generator=generator) for c in centres])
    bank = torch.cat([bank, torch.zeros(len(bank), 30)], dim=1)  # padded, so the projection has room
    chosen = greedy_coreset(bank, 4, dims=8)
    assert sorted((index // 250).item() for index in chosen) == [0, 1, 2, 3]
    assert len(greedy_coreset(bank, 5000)) == len(bank)  # asking for more keeps everything


def _images(count: int, generator: torch.Generator, defect: bool = False) -> torch.Tensor:
    patches = torch.randn(count, 16, 8, generator=generator) * 0.1
    if defect:
        patches[:, 5] += 3.0  # one patch of each image far from anything valid
    return patches


def test_one_unusual_patch_makes_an_image_score_as_anomalous():
    generator = torch.Generator().manual_seed(1)
    memory = PatchMemory.fit(_images(50, generator), fraction=0.2, seed=0)
    assert memory.describe() == {"memory_patches": 160, "patches_seen": 800, "channels": 8, "top_k": 1}
    normal, defective = memory.anomaly_scores(_images(20, generator)), memory.anomaly_scores(_images(20, generator, True))
    assert defective.min() > normal.max()
    # averaging over the 4 farthest patches dilutes the one defect, but still ranks it first
    wide = PatchMemory(memory.memory, top_k=4)
    wide_defective = wide.anomaly_scores(_images(20, generator, True))
    assert wide_defective.max() < defective.max()
    assert wide_defective.min() > wide.anomaly_scores(_images(20, generator)).max()


@pytest.mark.parametrize("rows", [1, 7, 512])
def test_distances_are_each_patch_to_its_nearest_memory_patch(rows):
    generator = torch.Generator().manual_seed(2)
    memory = PatchMemory(torch.randn(300, 8, generator=generator).to(torch.float16))
    patches = torch.randn(11, 16, 8, generator=generator).to(torch.float16)
    expected = torch.cdist(patches.float().reshape(-1, 8), memory.memory.float()).amin(1).reshape(11, 16)
    assert torch.allclose(memory.distances(patches, rows=rows), expected, atol=1e-4)
    # a patch that is in the memory is at distance zero, never NaN from rounding below zero
    assert memory.distances(memory.memory[None, :5]).max() < 1e-3


@pytest.mark.parametrize("settings", [{"fraction": 0.0}, {"fraction": 1.5}, {"max_size": 0}, {"top_k": 0}])
def test_bad_memory_settings_are_refused(settings):
    with pytest.raises(ParameterError, match="patch"):
        PatchMemory.fit(torch.zeros(2, 4, 3), **settings)
    with pytest.raises(ParameterError, match="valid training image"):
        PatchMemory.fit(torch.zeros(0, 4, 3))


def test_patches_come_from_the_same_pass_and_leave_the_other_features_unchanged(tmp_path):
    paths = [str(p) for p in write_files(tmp_path, {f"{i}.png": png_bytes(noise_image(i, (64, 48))) for i in range(3)})]
    spec = backbone_spec("efficientnet_lite0")
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights="none")
    plain = extract_backbone_features(backbone, paths, spec, torch.device("cpu"), batch_size=2)
    with_patches = extract_backbone_features(backbone, paths, spec, torch.device("cpu"), batch_size=2, patch_grid=7)
    assert "patches" not in plain
    assert with_patches["patches"].shape == (3, 49, 152) and with_patches["patches"].dtype == torch.float16
    for name in ("head_input", "pooled"):
        assert torch.equal(plain[name], with_patches[name]), name


def test_a_large_bank_is_drawn_down_before_the_greedy_selection_and_still_finds_defects():
    generator = torch.Generator().manual_seed(2)
    memory = PatchMemory.fit(_images(200, generator), fraction=0.01, seed=0)  # 3,200 patches, keeps 32 of 128 drawn
    assert memory.describe()["patches_seen"] == 3200 and len(memory.memory) == 32
    normal, defective = memory.anomaly_scores(_images(20, generator)), memory.anomaly_scores(_images(20, generator, True))
    assert defective.min() > normal.max()



def _faint(count: int, generator: torch.Generator, defect: bool) -> torch.Tensor:
    """Patches whose channels 1-7 vary widely and say nothing; a defect lifts channel 0 of one patch
    by five of its standard deviations, a small step next to the spread of the others."""
    patches = torch.randn(count, 16, 8, generator=generator)
    patches[..., 1:] *= 3.0
    patches[..., 0] *= 0.3
    if defect:
        patches[:, 5, 0] += 1.5
    return patches.to(torch.float16)


def _train_and_test(make, seed: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """100 valid and 100 defective training images of ``make``'s patches, 50 and 50 test images."""
    generator = torch.Generator().manual_seed(seed)
    train = torch.cat([make(100, generator, False), make(100, generator, True)])
    test = torch.cat([make(50, generator, False), make(50, generator, True)])
    return train, np.r_[np.ones(100), np.zeros(100)].astype(int), test, np.r_[np.ones(50), np.zeros(50)]


def test_the_patch_classifier_learns_a_faint_local_defect_that_the_valid_memory_misses():
    train, targets, test, test_targets = _train_and_test(_faint, 3)
    classifier = PatchClassifier.fit(train, targets, top_k=1, seed=0)
    memory = PatchMemory.fit(train[:100], fraction=0.2, seed=0)
    assert roc_auc_score(test_targets, classifier.scores(test)) > 0.95  # higher means valid, as for every score
    assert roc_auc_score(test_targets, -memory.anomaly_scores(test)) < 0.7
    assert classifier.describe() == {"channels": 8, "hidden": 64, "top_k": 1, "epochs": 30, "positional": False}


def _aligned(count: int, generator: torch.Generator, defect: bool) -> torch.Tensor:
    """Patches of aligned photos on a 4x4 grid: the top row is a busbar in every image (channel 0
    high), and a defect is the same dark line anywhere below it, so that patch by patch a defect looks
    exactly like the busbar; only where it is tells them apart."""
    patches = torch.randn(count, 16, 8, generator=generator)
    patches[:, :4, 0] += 4.0
    if defect:
        patches[torch.arange(count), torch.randint(4, 16, (count,), generator=generator), 0] += 4.0
    return patches.to(torch.float16)


def test_a_positional_patch_classifier_reads_each_patch_against_its_own_place():
    train, targets, test, test_targets = _train_and_test(_aligned, 8)
    positional = PatchClassifier.fit(train, targets, top_k=1, seed=0, positional=True)
    assert roc_auc_score(test_targets, positional.scores(test)) > 0.95
    assert roc_auc_score(test_targets, PatchClassifier.fit(train, targets, top_k=1, seed=0).scores(test)) < 0.75
    assert positional.mean.shape == (16, 8) and positional.describe()["positional"] is True


@pytest.mark.parametrize("positional", [False, True])
def test_evaluate_fits_the_patch_classifier_with_its_positional_setting(positional):
    from image_classification.scorers.patch_classifier import fit_patch_classifier
    from image_classification.parameters.evaluate import EvaluateConfig

    train, targets, _, _ = _train_and_test(_aligned, 10)
    fitted = fit_patch_classifier(train, targets, EvaluateConfig(patch_classifier_positional=positional,
                                                                 patch_classifier_epochs=1), seed=0)
    assert fitted.describe()["positional"] is positional
    assert fitted.mean.shape == ((16, 8) if positional else (8,))
    given = train.float()  # float32 patches, as a cache in memory may hold them, come back unchanged
    fit_patch_classifier(given, targets, EvaluateConfig(patch_classifier_positional=positional,
                                                        patch_classifier_epochs=1), seed=0)
    assert torch.equal(given, train.float())


def test_a_positional_patch_classifier_is_served_as_it_scored_and_only_on_its_own_grid():
    import json

    from image_classification.patches import PatchEnsemble

    generator = torch.Generator().manual_seed(9)
    train = torch.cat([_aligned(20, generator, False), _aligned(20, generator, True)])
    classifier = PatchClassifier.fit(train, np.r_[np.ones(20), np.zeros(20)].astype(int), epochs=3, hidden=8,
                                     top_k=2, positional=True)
    payload = json.loads(json.dumps(PatchEnsemble([classifier]).to_payload(grid=4)))
    restored = PatchEnsemble.from_payload(payload)
    np.testing.assert_allclose(restored.scores(train), classifier.scores(train), atol=1e-6)
    with pytest.raises(DataError, match="grid of 16 patches per image and is given 25"):
        restored.scores(torch.zeros(2, 25, 8))
    with pytest.raises(DataError, match="inconsistent shapes"):  # a grid that does not fit the stored means
        PatchClassifier.from_payload({**payload["members"][0], "grid": 5})


def test_the_patch_classifier_is_repeatable_and_leaves_the_global_random_state_alone():
    generator = torch.Generator().manual_seed(4)
    train = torch.cat([_faint(20, generator, False), _faint(20, generator, True)])
    targets = np.r_[np.ones(20), np.zeros(20)].astype(int)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = PatchClassifier.fit(train, targets, epochs=3, seed=7).scores(train, rows=7)
    assert torch.equal(torch.rand(3), expected_next)
    assert np.array_equal(first, PatchClassifier.fit(train, targets, epochs=3, seed=7).scores(train))
    assert not np.array_equal(first, PatchClassifier.fit(train, targets, epochs=3, seed=8).scores(train))


@pytest.mark.parametrize("settings", [{"epochs": 0}, {"hidden": 0}, {"top_k": 0}])
def test_the_patch_classifier_refuses_one_label_and_bad_settings(settings):
    patches = torch.zeros(4, 6, 3)
    with pytest.raises(ParameterError, match="both labels"):
        PatchClassifier.fit(patches, np.ones(4, dtype=int))
    with pytest.raises(ParameterError, match="at least 1"):
        PatchClassifier.fit(patches, np.array([0, 1, 0, 1]), **settings)


@pytest.mark.parametrize("grid", [0, 5])
def test_the_train_feature_cache_keeps_patches_on_the_configured_grid(tmp_path, grid):
    paths = write_files(tmp_path, {f"{i}.png": png_bytes(noise_image(i, (40, 40))) for i in range(2)})
    index = pd.DataFrame({"path": [str(p) for p in paths],
                          "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]})
    payload = extract_features(index, ModelConfig("efficientnet_lite0", weights="none"),
                               {"device": "cpu", "threads": 1, "batch_size": 2, "workers": 0}, 42,
                               TrainConfig(patch_grid=grid))
    cache = FeatureCache.from_payload(payload)
    if grid:
        assert cache.patches.shape == (2, 25, 152) and "patches" in payload["tensors"]
    else:
        assert cache.patches is None and "patches" not in payload["tensors"]
    with pytest.raises(ValueError, match="patch_grid"):
        TrainConfig(patch_grid=-1)


def test_a_patch_classifier_saved_as_plain_numbers_scores_as_it_did():
    """evaluate saves the patch classifier as JSON numbers (nothing to unpickle); loaded back, it
    gives the same scores, and a damaged file is refused with what to do."""
    import json

    from image_classification.errors import DataError

    generator = torch.Generator().manual_seed(5)
    train = torch.cat([_faint(20, generator, False), _faint(20, generator, True)])
    classifier = PatchClassifier.fit(train, np.r_[np.ones(20), np.zeros(20)].astype(int), epochs=3, hidden=8, top_k=2)
    payload = json.loads(json.dumps(classifier.to_payload(grid=4)))
    assert payload["grid"] == 4 and payload["top_k"] == 2
    restored = PatchClassifier.from_payload(payload)
    assert np.allclose(restored.scores(train), classifier.scores(train), atol=1e-6)
    for damaged in ({**payload, "hidden_bias": payload["hidden_bias"][:-1]}, {k: v for k, v in payload.items()
                                                                             if k != "mean"}):
        with pytest.raises(DataError, match="run the evaluate pipeline again"):
            PatchClassifier.from_payload(damaged)


def test_a_patch_ensemble_scores_the_mean_of_its_members_and_reads_a_single_classifier_too():
    from image_classification.errors import DataError
    from image_classification.patches import PatchEnsemble

    generator = torch.Generator().manual_seed(6)
    train = torch.cat([_faint(20, generator, False), _faint(20, generator, True)])
    targets = np.r_[np.ones(20), np.zeros(20)].astype(int)
    members = [PatchClassifier.fit(train, targets, epochs=2, hidden=8, top_k=2, seed=seed) for seed in (0, 1)]
    ensemble = PatchEnsemble.from_payload(PatchEnsemble(members).to_payload(grid=4))
    expected = (members[0].scores(train) + members[1].scores(train)) / 2
    np.testing.assert_allclose(ensemble.scores(train), expected, atol=1e-6)
    single = PatchEnsemble.from_payload(members[0].to_payload(grid=4))  # what a split fit's operating point holds
    np.testing.assert_allclose(single.scores(train), members[0].scores(train), atol=1e-6)
    with pytest.raises(DataError, match="holds no members"):
        PatchEnsemble.from_payload({"grid": 4, "members": []})


@pytest.mark.parametrize("grid", [1, 7, 14, 28])
def test_the_grid_of_patch_vectors_is_the_side_of_their_square(grid):
    assert grid_of(torch.zeros(3, grid * grid, 5)) == grid


def test_patch_vectors_that_are_not_a_square_grid_are_refused_by_name():
    from image_classification.errors import DataError

    with pytest.raises(DataError, match="hold 195 patches per image, which is not a square grid.*run train again"):
        grid_of(torch.zeros(2, 195, 152))


def test_position_moments_read_in_chunks_equal_the_whole_tensors_mean_and_variance():
    # a float16 cache (as stored), 7 images read 3 at a time: the last chunk is short
    patches = (torch.randn(7, 4, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1).half()
    mean, variance = position_moments(patches, rows=3)
    assert mean.shape == variance.shape == (4, 5) and mean.dtype == torch.float64
    assert torch.allclose(mean, patches.double().mean(0), atol=1e-12)
    assert torch.allclose(variance, patches.double().var(0, unbiased=True), atol=1e-10)


def test_fine_patch_maps_are_averaged_onto_the_stride_8_grid_whatever_the_input_size():
    """The fine patch vectors of the patch Gaussian's map: the stride-4 map halved onto the stride-8 map's
    grid (an odd side rounds up, as the convolutions' padding does), which it then matches cell for cell."""
    from image_classification.fine_patches import fine_halvings, fine_patch_features, max_to_grid

    assert fine_halvings([56, 28]) == (1, 0) and fine_halvings([65, 33]) == (1, 0)  # 224 and 260 px
    with pytest.raises(ParameterError, match="do not halve onto one grid"):
        fine_halvings([50, 28])
    coarse, fine = torch.randn(2, 3, 5, 5), torch.randn(2, 4, 3, 3)
    vectors = fine_patch_features([coarse, fine], dtype=torch.float32)
    assert vectors.shape == (2, 9, 7)
    # the last cell of the odd 5 x 5 map averages its own pixel only (the border's own pixels)
    torch.testing.assert_close(vectors[:, 8, :3], coarse[:, :, 4, 4])
    torch.testing.assert_close(vectors[:, 0, :3], coarse[:, :, :2, :2].mean((2, 3)))
    torch.testing.assert_close(vectors[:, :, 3:], fine.flatten(2).transpose(1, 2))
    values = torch.arange(16.0).reshape(1, 16)  # a 4 x 4 map: each 2 x 2 cell's maximum
    torch.testing.assert_close(max_to_grid(values, 2), torch.tensor([[5.0, 7.0, 13.0, 15.0]]))
    assert max_to_grid(values, 4) is values
    with pytest.raises(DataError, match="15 patches per image, which is not a square grid"):
        max_to_grid(torch.zeros(1, 15), 2)
