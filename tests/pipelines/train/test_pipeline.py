"""The whole train pipeline on an in-memory catalog: random backbone, tiny generated images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure

from image_classification.backbones import build_backbone
from image_classification.model import ClassifierHead
from image_classification.parameters.runtime import RuntimeConfig
from image_classification.parameters.shared import ModelConfig
from image_classification.pipelines.train import create_pipeline
from image_classification.training import TrainConfig

from ...conftest import KeptDataset, noise_image, png_bytes, write_files
from ...test_training import MemoryStore

SPLITS = {"train": 4, "val": 2}  # images per label
SEED = 42



pytestmark = pytest.mark.usefixtures("one_thread")


def make_image_index(folder) -> pd.DataFrame:
    """12 images of 32x32, as data_prep indexes them: valid ones light, invalid ones dark."""
    rows, seed = [], 0
    for split, per_label in SPLITS.items():
        for label in ("valid", "invalid"):
            for _ in range(per_label):
                seed += 1
                image = noise_image(seed, size=(32, 32)).point(lambda v: v // 2 + (128 if label == "valid" else 0))
                path = write_files(folder / split, {f"{label}_{seed}.png": png_bytes(image)})[0]
                rows.append({"path": str(path), "label": label, "kind": label, "split": split,
                             "target": int(label == "valid")})
    for kind in ("digit", "texture"):  # unseen kinds get features but are never trained on
        seed += 1
        path = write_files(folder / "unseen", {f"{kind}.png": png_bytes(noise_image(seed, size=(32, 32)))})[0]
        rows.append({"path": str(path), "label": None, "kind": kind, "split": "unseen", "target": None})
    index = pd.DataFrame(rows).astype({"label": "string", "kind": "string", "split": "string", "target": "Int8"})
    # what data_prep records: train and score skip a file whose bytes no longer hash to it
    index["sha256"] = [hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in index["path"]]
    return index


def run_train_pipeline(index: pd.DataFrame, store: MemoryStore, trainable_blocks: int, epochs: int,
                       backend: str = "auto", fine_class_weight: float = 0.0, augment: str = "none",
                       input_size: int | None = None) -> DataCatalog:
    inputs = {
        "image_index": index,
        # typed parameters: Kedro builds these dataclasses before a session runs; a bare runner does not
        "params:model": ModelConfig(backbone="efficientnet_lite0", weights="none", input_size=input_size),
        "params:train": TrainConfig(epochs=epochs, batch_size=4, patience=None, save_state_every_s=0,
                                    trainable_blocks=trainable_blocks, workers=0, fine_class_weight=fine_class_weight,
                                    augment=augment),
        "params:runtime": RuntimeConfig(device="cpu", threads=None, batch_size=8, workers=0, backend=backend),
        "params:seed": SEED,
    }
    catalog = DataCatalog({name: MemoryDataset(value) for name, value in inputs.items()})
    catalog["training_state"] = MemoryDataset(store, copy_mode="assign")  # the node writes into it
    for name in ("backbone_features", "model_checkpoint", "training_history", "training_curves"):
        catalog[name] = KeptDataset(copy_mode="assign")
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


# fine-tuning runs the backbone every epoch: one epoch keeps it quick
@pytest.mark.parametrize(
    ("trainable_blocks", "epochs"), [(0, 2), (1, 1)], ids=["cached_features", "fine_tune_last_block"]
)
def test_train_pipeline_on_an_in_memory_catalog(tmp_path, trainable_blocks, epochs):
    index = make_image_index(tmp_path / "images")
    store = MemoryStore()
    catalog = run_train_pipeline(index, store, trainable_blocks, epochs)

    features = catalog.load("backbone_features")
    assert features["tensors"]["head_input"].shape == (len(index), 1280, 4, 4)
    assert features["tensors"]["pooled"].shape == (len(index), 1280)
    assert features["metadata"]["sha256"] == index["sha256"].tolist()
    assert features["metadata"]["errors"] == [""] * len(index)

    history = catalog.load("training_history")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    assert {"train_loss", "val_loss", "val_recall_at_precision", "val_average_precision"} <= set(history.columns)

    checkpoint = catalog.load("model_checkpoint")
    metadata = checkpoint["metadata"]
    assert metadata["backbone"] == "efficientnet_lite0"
    assert metadata["class_names"] == ["invalid", "valid"]
    assert 1 <= metadata["best_epoch"] <= epochs
    assert metadata["epochs_run"] == epochs
    assert metadata["fine_tuned_blocks"] == trainable_blocks
    assert metadata["head"] == {"in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
    best_row = history.loc[history["epoch"] == metadata["best_epoch"]].iloc[0]
    assert metadata["best_val_recall_at_precision"] == history["val_recall_at_precision"].max()
    assert best_row["val_recall_at_precision"] == history["val_recall_at_precision"].max()

    # every epoch saved its state (save_state_every_s=0), and a finished run leaves none behind
    assert store.writes == list(range(1, epochs + 1)) and store.cleared and store.state is None

    # the node seeds the initial weights: the frozen blocks are untouched, batch-norm statistics
    # included, and what was trained moved
    torch.manual_seed(SEED)
    initial_backbone = build_backbone("efficientnet_lite0", weights="none")
    initial_head = ClassifierHead()
    tensors = checkpoint["tensors"]
    trained_blocks = [f"backbone.{8 - i}." for i in range(trainable_blocks)]
    for name, initial in initial_backbone.state_dict().items():
        frozen = not any(f"backbone.{name}".startswith(prefix) for prefix in trained_blocks)
        assert torch.equal(tensors[f"backbone.{name}"], initial) == frozen, name
    assert not torch.equal(tensors["head.layers.0.weight"], initial_head.layers[0].weight.detach())

    figure = catalog.load("training_curves")
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    marked = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert f"best epoch {metadata['best_epoch']} (restored)" in marked
    plt.close(figure)


def catalog_head(catalog: DataCatalog) -> dict:
    return catalog.load("model_checkpoint")["metadata"]["head"]


def test_finer_classes_train_an_auxiliary_output_that_the_checkpoint_keeps(tmp_path):
    from image_classification.artefacts import Checkpoint

    index = make_image_index(tmp_path / "images")
    labelled = index["label"].notna()
    # two classes per label, as class_folders gives them (car/truck valid, cat/dog invalid)
    names = {"valid": ("car", "truck"), "invalid": ("cat", "dog")}
    index.loc[labelled, "kind"] = [names[label][i % 2] for i, label in enumerate(index.loc[labelled, "label"])]
    assert catalog_head(run_train_pipeline(index, MemoryStore(), 0, 1)) == {  # off unless asked for
        "in_channels": 1280, "hidden_channels": 320, "embedding_dim": 50, "num_classes": 2}
    catalog = run_train_pipeline(index, MemoryStore(), 0, 1, fine_class_weight=1.0)

    payload = catalog.load("model_checkpoint")
    assert payload["metadata"]["fine_class_names"] == ["car", "cat", "dog", "truck"]
    assert payload["metadata"]["head"]["fine_classes"] == 4
    assert payload["tensors"]["head.fine.weight"].shape == (4, 50)
    model = Checkpoint.from_payload(payload).model()  # rebuilds the head with its fine output, strictly
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 2)


def test_fine_tuning_on_the_frozen_blocks_in_onnx_runtime_trains_as_pytorch_does(tmp_path, caplog):
    index = make_image_index(tmp_path / "images")
    with caplog.at_level("INFO"):
        fast = run_train_pipeline(index, MemoryStore(), trainable_blocks=1, epochs=2, backend="auto")
    assert "The frozen blocks' output: ONNX Runtime vs PyTorch" in caplog.text
    eager = run_train_pipeline(index, MemoryStore(), trainable_blocks=1, epochs=2, backend="torch")
    fast_history, eager_history = fast.load("training_history"), eager.load("training_history")
    pd.testing.assert_frame_equal(fast_history, eager_history, atol=1e-3, rtol=1e-3)
    fast_weights, eager_weights = fast.load("model_checkpoint")["tensors"], eager.load("model_checkpoint")["tensors"]
    for name in ("backbone.8.0.weight", "head.layers.0.weight", "head.layers.9.weight"):
        assert torch.allclose(fast_weights[name], eager_weights[name], atol=1e-3), name


def test_fine_tuning_with_inspection_augmentation_trains_on_turned_and_jittered_images(tmp_path, caplog):
    """train.augment=inspection reaches the fine-tuning batches: the same seed trains other weights
    than without it. With a frozen backbone the head trains on cached features, and the run says the
    setting does nothing there instead of ignoring it silently."""
    index = make_image_index(tmp_path / "images")
    plain = run_train_pipeline(index, MemoryStore(), trainable_blocks=1, epochs=1, backend="torch")
    turned = run_train_pipeline(index, MemoryStore(), trainable_blocks=1, epochs=1, backend="torch",
                                augment="inspection")
    name = "backbone.8.0.weight"
    assert not torch.equal(plain.load("model_checkpoint")["tensors"][name], turned.load("model_checkpoint")["tensors"][name])
    assert turned.load("model_checkpoint")["metadata"]["train"]["augment"] == "inspection"
    with caplog.at_level("WARNING"):
        run_train_pipeline(index, MemoryStore(), trainable_blocks=0, epochs=1, augment="inspection")
    assert "train.augment=inspection has no effect with a frozen backbone" in caplog.text


def test_a_chosen_input_size_is_recorded_by_the_feature_cache_and_the_fine_tuned_checkpoint(tmp_path):
    """model.input_size: the cache records the size its features were computed at and the fine-tuned
    checkpoint says so, so that the score stage and predict resize as training did (predict's own test
    checks that it does); a cache of another size is refused."""
    from image_classification.artefacts import Checkpoint, FeatureCache
    from image_classification.errors import DataError

    index = make_image_index(tmp_path / "images")
    catalog = run_train_pipeline(index, MemoryStore(), trainable_blocks=1, epochs=1, backend="torch", input_size=64)
    features = catalog.load("backbone_features")
    assert features["metadata"]["input_size"] == 64
    assert features["tensors"]["head_input"].shape == (len(index), 1280, 4, 4)
    checkpoint = Checkpoint.from_payload(catalog.load("model_checkpoint"))
    assert checkpoint.input_size == 64 and checkpoint.spec.input_size == 64 and checkpoint.spec.feature_size == 2
    default = run_train_pipeline(index, MemoryStore(), trainable_blocks=0, epochs=1).load("backbone_features")
    assert default["metadata"]["input_size"] == 224
    with pytest.raises(DataError, match="input size 64 px, not 224"):
        FeatureCache.from_payload(default).check(index, "efficientnet_lite0", "pooled", input_size=64)
