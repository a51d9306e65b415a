"""The fold stack: per-fold calibration, a stacker that keeps each input's meaning, a global gate, and
a served score whose threshold means what it meant on the out-of-fold scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from image_classification.artefacts import Checkpoint
from image_classification.operating_point import OperatingPoint
from image_classification.scorers import ServedScore
from image_classification.scorers.baseline import BaselineWeights, LogisticBaseline
from image_classification.errors import DataError
from image_classification.global_gate import GlobalGate
from image_classification.scorers.fold_stack import (
    FoldStack,
    Stacker,
    fit_fold_stack,
    input_logits,
    platt,
)
from image_classification.metrics import oracle_recall, recall_at_precision_bound, recall_efficiency
from image_classification.patch_gaussian import PatchGaussian
from image_classification.patches import PatchClassifier

GRID, CHANNELS = 4, 6


def aligned_cells(count: int, generator: torch.Generator, defect: bool = False) -> torch.Tensor:
    """(count, GRID², CHANNELS) patch vectors of aligned parts: a fixed pattern per grid position plus
    noise; a defect is one patch far off its place's pattern."""
    pattern = torch.linspace(-2, 2, GRID * GRID * CHANNELS).reshape(GRID * GRID, CHANNELS)
    cells = pattern + 0.3 * torch.randn(count, GRID * GRID, CHANNELS, generator=generator)
    if defect:
        where = torch.randint(0, GRID * GRID, (count,), generator=generator)
        cells[torch.arange(count), where] += 3.0
    return cells


# ---------------------------------------------------------------- the global gate


def test_the_gate_refuses_images_unlike_valid_ones_as_a_whole_and_keeps_local_defects_for_the_scores():
    generator = torch.Generator().manual_seed(0)
    gate = GlobalGate.fit(aligned_cells(200, generator))
    new_valid = gate.passes(aligned_cells(200, generator))
    assert new_valid.mean() >= 0.97  # a new valid image exceeds the largest of n with probability 1/(n + 1)
    # a local defect moves one patch of sixteen: the gate leaves it to the patch scores
    assert gate.passes(aligned_cells(50, generator, defect=True)).mean() >= 0.95
    typical = aligned_cells(1, generator)
    black = torch.zeros(1, GRID * GRID, CHANNELS)
    blank = typical.mean(1, keepdim=True).expand(1, GRID * GRID, CHANNELS)  # one value everywhere: no structure
    blurred = typical.mean((1, 2), keepdim=True) + 0.2 * (typical - typical.mean((1, 2), keepdim=True))
    assert not gate.passes(torch.cat([black, blank, blurred])).any()


def test_the_gate_round_trips_through_json_and_refuses_another_grid():
    generator = torch.Generator().manual_seed(1)
    gate = GlobalGate.fit(aligned_cells(20, generator))
    again = GlobalGate.from_payload(json.loads(json.dumps(gate.to_payload())))
    cells = aligned_cells(5, generator)
    np.testing.assert_allclose(again.statistics(cells), gate.statistics(cells), rtol=1e-6)
    assert again.cut == gate.cut
    with pytest.raises(DataError, match="patch_grid"):
        gate.statistics(torch.zeros(2, 9, CHANNELS))
    with pytest.raises(DataError, match="at least two"):
        GlobalGate.fit(cells[:1])


# ---------------------------------------------------------------- calibration and stacking


def test_platt_scaling_undoes_a_fold_s_own_scale():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=4000)
    targets = (rng.random(4000) < expit(truth)).astype(int)
    a, b = platt(3 * truth + 5, targets)  # a fold whose fit is three times as confident and shifted
    assert a == pytest.approx(1 / 3, rel=0.15) and a * 5 + b == pytest.approx(0, abs=0.3)
    assert platt(truth, np.ones(4000, int)) == (1.0, 0.0)  # one label: nothing to calibrate on


def test_pooled_scores_of_folds_on_other_scales_rank_worse_than_the_fold_stack_s_and_its_threshold_keeps_more():
    """Two folds rank their own images equally well, but one scores on another scale: pooled raw, its
    invalid images outrank the other fold's valid ones. Calibrated per fold first, they do not."""
    rng = np.random.default_rng(1)
    folds = np.repeat([0, 1], 600)
    targets = rng.integers(0, 2, 1200)
    evidence = np.where(targets == 1, 2.0, -2.0) + rng.normal(size=1200)
    raw = np.column_stack([evidence + rng.normal(size=1200), evidence])
    raw[folds == 1] = 4 * raw[folds == 1] + 12  # the second fold's fits: overconfident and shifted
    stack, out_of_fold = fit_fold_stack(raw, folds, targets, [None, None], [None, None], None, None, GRID, seed=0)
    pooled_raw = roc_auc_score(targets, raw[:, 1])
    assert roc_auc_score(targets, out_of_fold) > pooled_raw + 0.03
    kept = {}
    for name, scores in (("raw", raw[:, 1]), ("stack", out_of_fold)):
        threshold = recall_at_precision_bound(targets, scores, 0.9).threshold
        kept[name] = recall_efficiency(float(np.mean(scores[targets == 1] >= threshold)),
                                       oracle_recall(targets[folds == 0], scores[folds == 0], 0.9))
    assert kept["stack"] > kept["raw"]
    assert (stack.stacker.coef >= 0).all()


def test_an_input_that_would_get_a_negative_weight_is_left_out():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 2, 500)
    good = np.where(targets == 1, 1.5, -1.5) + rng.normal(size=500)
    misleading = -0.3 * good + rng.normal(size=500)  # anti-correlated once the good input is known
    stacker = Stacker.fit(np.column_stack([misleading, good]), targets, seed=0)
    assert stacker.coef[0] == 0 and stacker.coef[1] > 0


# ---------------------------------------------------------------- the served stack


def fitted_stack(seed: int = 0, gaussian: bool = False) -> tuple[FoldStack, np.ndarray, torch.Tensor, np.ndarray]:
    """A fold stack of two real fold fits on aligned cells (pooled features: the cells' mean), with
    its pooled features, patches and targets; with ``gaussian``, a patch Gaussian per fold as its third
    input (without: a stack as fitted before there was one)."""
    generator = torch.Generator().manual_seed(seed)
    valid, invalid = aligned_cells(60, generator), aligned_cells(60, generator, defect=True)
    patches = torch.cat([valid, invalid])
    targets = np.r_[np.ones(60, int), np.zeros(60, int)]
    pooled = patches.mean(1).numpy().astype(np.float64)
    folds = np.arange(120) % 2
    baselines, classifiers, gaussians, raw = [], [], [], np.zeros((120, 3 if gaussian else 2))
    for fold in (0, 1):
        fit, held = folds != fold, folds == fold
        baseline = LogisticBaseline((1.0,), 0.9, seed).fit(pooled[fit], targets[fit], pooled[fit], targets[fit])
        weights = BaselineWeights.of(baseline, "efficientnet_lite0")
        classifier = PatchClassifier.fit(patches[fit], targets[fit], epochs=15, hidden=8, top_k=1, seed=seed)
        gaussians.append(PatchGaussian.fit(patches[fit][targets[fit] == 1]))
        raw[held] = input_logits(weights.score(pooled[held]), classifier.scores(patches[held]),
                                 -gaussians[-1].anomaly_scores(patches[held]) if gaussian else None)
        baselines.append(weights), classifiers.append(classifier)
    gate = GlobalGate.fit(valid)
    stack, _ = fit_fold_stack(raw, folds, targets, baselines, classifiers, np.ones(120, bool), gate, GRID, seed,
                              gaussians if gaussian else None)
    return stack, pooled, patches, targets


def test_the_served_stack_ranks_new_images_round_trips_through_json_and_gates_a_black_image():
    stack, _, _, _ = fitted_stack()
    generator = torch.Generator().manual_seed(5)
    new = torch.cat([aligned_cells(30, generator), aligned_cells(30, generator, defect=True)])
    scores = stack.scores(new.mean(1).numpy(), new)
    assert roc_auc_score(np.r_[np.ones(30), np.zeros(30)], scores) > 0.9
    again = FoldStack.from_payload(json.loads(json.dumps(stack.to_payload())))
    np.testing.assert_allclose(again.scores(new.mean(1).numpy(), new), scores, rtol=1e-5, atol=1e-7)
    black = torch.zeros(1, GRID * GRID, CHANNELS)
    assert stack.scores(black.mean(1).numpy(), black)[0] == 0.0
    with pytest.raises(DataError, match="patch grid"):
        stack.scores(np.zeros((1, CHANNELS)), torch.zeros(1, 9, CHANNELS))
    with pytest.raises(DataError, match="incomplete or malformed"):
        FoldStack.from_payload({"members": []})


def test_a_stack_with_the_patch_gaussian_ranks_round_trips_and_its_map_points_at_the_defect():
    stack, _, _, _ = fitted_stack(gaussian=True)
    assert stack.inputs == ("baseline", "patch_classifier", "patch_gaussian")
    assert set(stack.describe()["map_weights"]) == {"patch_classifier", "patch_gaussian"}
    generator = torch.Generator().manual_seed(6)
    valid = aligned_cells(30, generator)
    invalid = valid[:20].clone()
    where = torch.randint(0, GRID * GRID, (20,), generator=generator)
    invalid[torch.arange(20), where] += 3.0
    new = torch.cat([valid, invalid])
    scores = stack.scores(new.mean(1).numpy(), new)
    assert roc_auc_score(np.r_[np.ones(30), np.zeros(20)], scores) > 0.9
    maps = stack.patch_map(invalid)
    assert (maps.argmax(1) == where.numpy()).mean() >= 0.9
    again = FoldStack.from_payload(json.loads(json.dumps(stack.to_payload())))
    np.testing.assert_allclose(again.scores(new.mean(1).numpy(), new), scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(again.patch_map(invalid), maps, rtol=1e-5, atol=1e-6)
    payload = stack.to_payload()
    del payload["members"][0]["patch_gaussian"]  # a member without the input its stacker reads
    with pytest.raises(DataError, match="inconsistent shapes"):
        FoldStack.from_payload(payload)


def test_a_stack_fitted_before_the_patch_gaussian_still_serves_and_draws_its_classifier_s_map():
    stack, _, patches, _ = fitted_stack()
    assert stack.inputs == ("baseline", "patch_classifier") and stack.local_weights().tolist() == [1.0]
    member = stack.members[0]
    expected = np.mean([m.local_maps(patches)[0].numpy() for m in stack.members], axis=0)
    assert len(member.local_maps(patches)) == 1
    np.testing.assert_allclose(stack.patch_map(patches), expected, rtol=1e-6)


def test_an_operating_point_serves_the_fold_stack_from_pooled_features_and_patches():
    stack, pooled, patches, _ = fitted_stack()
    checkpoint = Checkpoint.from_payload({"tensors": {}, "metadata": {
        "backbone": "efficientnet_lite0", "weights": "imagenet", "input_size": 224, "mean": [0.5] * 3,
        "std": [0.5] * 3, "head": {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50,
                                   "num_classes": 2},
        "class_names": ["invalid", "valid"], "best_epoch": 1, "fine_tuned_blocks": 0, "seed": 42, "epochs_run": 1}})
    point = OperatingPoint.for_checkpoint({"threshold": 0.5, "rule": "point"}, checkpoint, "fold_stack",
                                          stack.to_payload())
    served = ServedScore.of(json.loads(json.dumps(point.to_payload())))
    assert served.candidate == "fold_stack" and served.patch_grid == GRID
    model_scores = np.full(len(pooled), 0.5)
    model_scores[3] = np.nan  # unreadable
    scores = served.scores(model_scores, torch.from_numpy(pooled), patches)
    expected = stack.scores(pooled, patches)
    assert np.isnan(scores[3])
    np.testing.assert_allclose(np.delete(scores, 3), np.delete(expected, 3), rtol=1e-5)
    with pytest.raises(DataError, match="needs pooled features"):
        served.scores(model_scores, None, patches)


def test_the_gate_refuses_dead_and_synthetic_global_defects_of_real_solar_cells_and_keeps_good_ones(tmp_path):
    """defects-dev (skipped where ../shared is absent): a gate fitted on 150 good cells' patches refuses
    the set's dead (black) cells and good cells of other modules made black, white, one grey or heavily
    blurred, and lets new good cells through."""
    import pandas as pd
    from PIL import Image, ImageFilter

    from image_classification.backbones import backbone_spec, build_backbone
    from image_classification.runtime.extraction import extract_backbone_features

    from .conftest import SHARED

    root = SHARED / "datasets" / "defects-dev"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"defects-dev not found at {root}")
    manifest = pd.read_csv(root / "manifest.csv")
    good = manifest[manifest["label"] == "valid"]
    modules = sorted(good["group"].unique())
    fitted_on = good[good["group"].isin(modules[::2])].sample(150, random_state=0)
    others = good[good["group"].isin(modules[1::2])].sample(40, random_state=0)
    dead = [root / p for p in ("defect/cell1836.png", "defect/cell1895.png", "defect/cell1896.png",
                               "defect/cell1897.png")]
    made = []
    for number, path in enumerate(others["path"].head(5)):
        with Image.open(root / path) as cell:
            grey = cell.convert("L")
            for kind, image in (("black", Image.new("L", grey.size, 0)), ("white", Image.new("L", grey.size, 255)),
                                ("grey", Image.new("L", grey.size, int(np.asarray(grey).mean()))),
                                ("blur", grey.filter(ImageFilter.GaussianBlur(12)))):
                made.append(tmp_path / f"{kind}_{number}.png")
                image.save(made[-1])
    paths = [str(root / p) for p in (*fitted_on["path"], *others["path"])] + [str(p) for p in (*dead, *made)]
    torch.manual_seed(0)
    features = extract_backbone_features(build_backbone("efficientnet_lite0"), paths,
                                         backbone_spec("efficientnet_lite0"), torch.device("cpu"), batch_size=32,
                                         patch_grid=14)
    patches = features["patches"]
    gate = GlobalGate.fit(patches[:150])
    passes = gate.passes(patches[150:])
    assert passes[:40].mean() >= 0.95  # good cells of modules the gate never saw
    assert not passes[40:].any()  # four dead cells, twenty global defects
