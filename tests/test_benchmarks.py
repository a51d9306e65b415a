"""benchmarks/ is one package: every module imports quietly and parses --help, none patches sys.path or imports
another benchmark, and the rows the harness appends read back through the compare command."""

from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import benchmarks
from benchmarks import compare, harness

from .conftest import CIFAR_DEV

PACKAGE = Path(benchmarks.__file__).parent
MODULES = sorted(module.name for module in pkgutil.iter_modules([str(PACKAGE)]))
SHARED = {"harness", "compare"}
LIBRARY = {"harness", "folds", "generated", "pasted_defects"}  # imported by benchmarks (folds through the harness), never run


def test_every_python_file_is_a_module_of_the_package():
    assert {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"} == set(MODULES)
    assert len(MODULES) > 15


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_without_side_effects_and_its_help_parses(name, capsys):
    # (torch and scikit-learn set a few variables of their own on import: TQDM_DISABLE is the benchmarks' one)
    path, progress, cwd = list(sys.path), os.environ.get("TQDM_DISABLE"), sorted(Path.cwd().iterdir())
    module = importlib.import_module(f"benchmarks.{name}")
    assert capsys.readouterr().out == ""
    assert (sys.path, os.environ.get("TQDM_DISABLE"), sorted(Path.cwd().iterdir())) == (path, progress, cwd)
    if name in LIBRARY:
        return
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage:")
    if name not in SHARED:
        assert "--results-file" in usage


def test_a_benchmark_runs_as_a_module_of_the_package():
    done = subprocess.run([sys.executable, "-m", "benchmarks.patch_scoring", "--help"], cwd=PACKAGE.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--results-file" in done.stdout


@pytest.mark.skipif(not CIFAR_DEV.is_dir(), reason="needs ../shared/datasets/cifar10-dev")
@pytest.mark.parametrize("name", ["train_feature_cache", "fine_tune_speed"])
def test_benchmarks_that_train_through_the_train_nodes_run_every_arm(name, tmp_path):
    """These two call the train stage's own helpers (image_feeds, fit), whose signatures move with the
    pipeline: a tiny run of every arm fails here instead of half an hour into a measurement."""
    results = tmp_path / "rows.csv"
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--images", "40", "--epochs", "1",
                           "--workers", "0", "--results-file", str(results)],
                          cwd=PACKAGE.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(compare.read_results(results)) == 2  # one row per arm


@pytest.mark.parametrize("path", sorted(PACKAGE.iterdir()), ids=lambda path: path.name)
def test_no_file_patches_sys_path(path):
    if path.is_file():
        assert "sys.path" not in path.read_text(errors="replace")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("name", sorted(set(MODULES) - LIBRARY))
def test_benchmarks_share_code_through_the_harness_alone(name):
    """No benchmark imports another, and the project modules being moved are named in the harness alone."""
    imported = imported_modules(PACKAGE / f"{name}.py")
    siblings = {f"benchmarks.{other}" for other in MODULES if other != "harness"} | set(MODULES)
    assert not imported & siblings
    assert not imported & set(harness.MOVED)


def test_results_rows_read_back_through_compare(tmp_path, capsys):
    old, new = tmp_path / "old.csv", tmp_path / "new.jsonl"
    made = harness.parser("toy")
    made.add_argument("--folds", type=int, default=2)
    settings = made.parse_args(["--results-file", str(old)])
    harness.write_results(old, "toy", [{"arm": "a", "fold": 0, "seconds": 2.0},
                                       {"arm": "a", "fold": 1, "seconds": 4.0}], settings)
    # a later row with a new column widens the CSV's header; the rows before keep their values
    harness.write_results(old, "other", [{"arm": "b", "auroc": 0.5, "held": True, "note": "text"}], settings)
    harness.write_results(new, "toy", [{"arm": "a", "fold": 0, "seconds": 1.5}])
    harness.write_results(new, "other", [{"arm": "b", "auroc": 0.75, "held": False}])
    capsys.readouterr()

    rows = compare.read_results(old)
    assert [row["benchmark"] for row in rows] == ["toy", "toy", "other"]
    assert rows[0]["seconds"] == "2.0" and rows[0]["auroc"] == "" and rows[2]["held"] == "1"
    assert {"revision", "date", "cpu", "settings"} <= set(rows[0])
    assert rows[0]["cpu"] == harness.cpu_model() and rows[0]["settings"] == "folds=2"

    found = {(row["benchmark"], row["arm"], row["metric"]): row for row in compare.compare(old, new)}
    assert set(found) == {("toy", "a", "seconds"), ("other", "b", "auroc"), ("other", "b", "held")}
    assert (found["toy", "a", "seconds"]["old"], found["toy", "a", "seconds"]["new"]) == (3.0, 1.5)
    assert found["toy", "a", "seconds"]["ratio"] == 0.5
    assert found["other", "b", "auroc"]["difference"] == 0.25
    printed = capsys.readouterr().out
    assert "0.500x" in printed and "note: toy ran with other settings" in printed

    compare.main([str(old), str(new), "--metric", "auroc"])
    printed = capsys.readouterr().out
    assert "auroc" in printed and "seconds" not in printed


def test_every_near_unseen_score_ranks_an_unseen_cluster_above_held_out_images():
    """near_unseen_scores' arms (decision 0027) score an image by how unlike the training images it is:
    a cluster none of them came from must rank above held-out images of the training classes, whatever
    the arm (a flipped sign, as local outlier factor's own score has, would put it below)."""
    from benchmarks import near_unseen_scores

    generator = np.random.default_rng(0)
    basis, centres = generator.normal(size=(16, 64)), generator.normal(size=(3, 16)) * 3
    kinds = np.repeat(["cat", "dog", "frog"], 200)  # frog: the unseen kind
    # features on a 16-d subspace, as backbone features mostly are, plus a little noise off it
    pooled = (centres[np.repeat([0, 1, 2], 200)] + generator.normal(size=(600, 16))) @ basis
    pooled += 0.1 * generator.normal(size=pooled.shape)
    features = {"pooled": pooled, "head_grid": pooled * 2 + 1, "patch_mean": pooled[:, :32],
                "imagenet_logits": pooled @ generator.normal(size=(64, 40)),
                # a second backbone (--with-backbone): another view of the same images, in 48 dimensions
                "with_pooled": pooled @ generator.normal(size=(64, 48)) + 0.1 * generator.normal(size=(600, 48))}
    index = pd.DataFrame({"kind": kinds, "split": np.where(kinds == "frog", "unseen", "train")})
    index.loc[index.index[150:200].union(index.index[350:400]), "split"] = "test"
    train = (index["split"] == "train").to_numpy()
    predicted = {}
    scores = near_unseen_scores.arm_scores(features, train, kinds[train], predicted)
    assert {"knn_pooled", "knn_head_grid", "knn_pca_whitened 32", "lof_pooled", "class_relative_knn",
            "knn_patch_mean", "knn_patch_mean_and_pooled", "knn_imagenet_logits", "imagenet_kl_to_train_mean",
            "logistic_energy C=0.3", "logistic_max_logit C=10", "knn_both_backbones_standardised_sum",
            "knn_both_backbones_concatenated"} <= set(scores)
    held_out = (index["split"] == "test").to_numpy()
    for fit, classified in predicted.items():  # the logistic regressions tell the two known kinds apart
        assert np.mean(classified[held_out] == kinds[held_out]) > 0.95, fit
    for arm, values in scores.items():
        assert values.shape == (600,)
        if "renormalised" not in arm:  # normalising whitened features drops the distance that tells an outlier
            assert near_unseen_scores.separation(values, index)["near_auroc"] > 0.95, arm


@pytest.mark.usefixtures("one_thread")
def test_every_patch_input_arm_ranks_images_with_a_local_defect_below_clean_ones():
    """patch_inputs' arms (decisions 0011, 0012, 0020, 0031) all score "valid" higher: on images where a
    defective one carries one unusual patch, each arm must rank the defective test images below the clean
    ones (a flipped sign, or an arm reading the wrong rows, would not)."""
    import torch
    from sklearn.metrics import roc_auc_score

    from benchmarks import patch_inputs
    from benchmarks.harness import grouped_folds

    generator = torch.Generator().manual_seed(0)
    images, places, channels = 480, 16, 8
    patches = torch.randn(images, places, channels, generator=generator)
    y = np.arange(images) % 3 != 0  # one in three defective
    where = torch.randint(places, (images,), generator=generator)
    for row in np.flatnonzero(~y):
        patches[row, where[row]] += 6.0  # the local defect: one patch far from every clean one
    features = {"patches": patches.half(), "pooled": torch.cat([patches.mean(1), patches.amax(1)], 1).half(),
                "head_grid": patches.half(), "other": (patches + 0.1 * torch.randn(patches.shape, generator=generator)).half()}
    y, groups = y.astype(int), np.arange(images) // 4  # modules of four images
    fold = patch_inputs.Fold(features, y, groups, next(grouped_folds(y, groups, 5, seed=42)))
    for name, arm in {**patch_inputs.ARMS, **patch_inputs.WITH_BACKBONE}.items():
        scores = arm(fold, 0)
        assert scores.shape == (len(fold.scored),), name
        assert roc_auc_score(y[fold.test], scores[len(fold.val):]) > 0.8, name
