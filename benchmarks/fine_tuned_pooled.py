"""The whole backbone fine-tuned on the fine classes: does it lift the pooled kNN's near AUROC?

Decision 0028's first look, before the pipeline could fine-tune the whole backbone: on cifar10-dev as
``--env cifar10_dev`` sees it (vehicles valid, four animals invalid; frog and horse the near unseen
kinds, the demo's digits, textures and photo crops the far ones; data_prep's own split per seed, the
images and scores of ``near_unseen_scores`` and ``open_world``), per input size the 32 px photos are
upscaled to (``model.input_size``) and split seed:

- ``frozen``      zero_shot's kNN (k = 5) on the frozen Lite0 backbone's L2-normalised pooled features,
  fitted on the training split's labelled images (``near_unseen_scores --input-sizes`` prints the same);
- ``fine_tuned``  the same kNN on the pooled features of the whole Lite0 backbone after fine-tuning it
  with a linear layer on its pooled features over the eight fine classes of the training split (not
  the pipeline's head): Adam under torch's OneCycleLR (peak 1e-3), cross-entropy with label smoothing
  0.1, ``train.augment: photo`` (random flips and shifts of up to an eighth of the side), batch 32,
  ``--epochs`` epochs, the last epoch's weights; the linear layer's accuracy on the validation split
  is printed after every epoch and kept in the row.

Each row: near AUROC (frog and horse against the labelled test images) and far AUROC.

    python -m benchmarks.fine_tuned_pooled                    # 128 and 96 px, seed 42, 15 epochs
        # (96 px alone took 40 min on 2 cores shared with other runs; 128 px costs about twice that an epoch)
    python -m benchmarks.fine_tuned_pooled --input-sizes 96 --epochs 1   # a smoke run

The frozen features come from the caches ``near_unseen_scores --input-sizes`` writes (``--cache``,
with ``_<size>px`` added to its name); the fine-tuned ones are extracted afresh every run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from benchmarks import harness
from benchmarks.harness import K, knn_scores, separation

PEAK_RATE, LABEL_SMOOTHING, BATCH, AUGMENT = 1e-3, 0.1, 32, "photo"


class PooledLinear(nn.Module):
    """The backbone, its map averaged over the grid (the pooled features), and one linear layer."""

    def __init__(self, backbone: nn.Module, channels: int, classes: int) -> None:
        super().__init__()
        self.backbone, self.linear = backbone, nn.Linear(channels, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.backbone(images).mean(dim=(2, 3)))


def fine_tune(index: pd.DataFrame, model, train_config, runtime: dict, epochs: int, seed: int
              ) -> tuple[nn.Module, list[float]]:
    """The whole backbone and a linear layer trained on the training split's fine classes; the backbone
    (last epoch) and the linear layer's validation accuracy after each epoch."""
    from image_classification.backbones import build_backbone
    from image_classification.sources import fine_classes

    harness.seed_everything(seed)
    device = harness.torch_device(runtime)
    rows = {split: np.flatnonzero((index["split"] == split).to_numpy()) for split in ("train", "val")}
    names, codes = fine_classes(index, rows["train"])
    val_kinds = index["kind"].to_numpy(dtype=str)[rows["val"]]
    if not np.isin(val_kinds, names).all():
        raise SystemExit(f"validation images of classes not in the training split: {set(val_kinds) - set(names)}")
    val_codes = np.searchsorted(names, val_kinds)
    paths = {split: index["path"].to_numpy()[rows[split]].tolist() for split in rows}
    sha256 = {split: index["sha256"].to_numpy()[rows[split]].tolist() for split in rows}
    network = PooledLinear(build_backbone(model.backbone, model.weights, model.weights_path),
                           model.spec.feature_channels, len(names)).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=PEAK_RATE, weight_decay=train_config.weight_decay)
    steps = math.ceil(len(paths["train"]) / BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=PEAK_RATE, total_steps=epochs * steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    accuracies, started = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(paths["train"]), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        loader = harness.image_loader([paths["train"][i] for i in order], model.spec, BATCH, train_config.workers,
                                      augment=AUGMENT, sha256=[sha256["train"][i] for i in order])
        network.train()
        total, seen, start = 0.0, 0, 0
        for images, reasons in loader:
            targets = torch.as_tensor(codes[order[start : start + len(images)].numpy()])
            start += len(images)
            readable = torch.tensor([not reason for reason in reasons])
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(images[readable].to(device)), targets[readable].to(device))
            loss.backward()
            optimizer.step()
            schedule.step()
            total, seen = total + loss.item() * int(readable.sum()), seen + int(readable.sum())
        network.eval()
        predicted = []
        with torch.inference_mode():
            for images, _ in harness.image_loader(paths["val"], model.spec, runtime["batch_size"],
                                                  train_config.workers, sha256=sha256["val"]):
                predicted.append(network(images.to(device)).argmax(dim=1).cpu())
        accuracies.append(float((torch.cat(predicted).numpy() == val_codes).mean()))
        print(f"  epoch {epoch}/{epochs}: train loss {total / max(seen, 1):.4f}, validation accuracy "
              f"{accuracies[-1]:.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return network.backbone.cpu().eval(), accuracies


def pooled_of(backbone: nn.Module, index: pd.DataFrame, model, runtime: dict) -> np.ndarray:
    """Every indexed image's pooled features through ``backbone``, by the train stage's extraction."""
    out = harness.extract_backbone_features(
        backbone, index["path"].tolist(), model.spec, harness.torch_device(runtime), batch_size=runtime["batch_size"],
        workers=runtime["workers"], head_input=model.head_input, sha256=index["sha256"].tolist(), patch_grid=0,
        backend=runtime["backend"], threads=runtime["threads"], parity_tolerance=runtime["parity_tolerance"])
    if any(out["errors"]):
        raise SystemExit(f"unreadable images: {[error for error in out['errors'] if error][:3]}")
    return out["pooled"].float().numpy()


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--input-sizes", type=int, nargs="+", default=[128, 96], metavar="PX",
                        help="model.input_size: the side the photos are upscaled to (default 128 96)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="split seeds (default 42)")
    parser.add_argument("--epochs", type=int, default=15, help="fine-tuning epochs (default 15)")
    parser.add_argument("--cache", type=Path, default=harness.CIFAR10_DEV_CACHE,
                        help="the frozen features' cache; each size's file is this name with _<size>px added")
    args = parser.parse_args(argv)
    harness.quiet_progress()
    if not harness.CIFAR10_DEV.is_dir():
        raise SystemExit(f"{harness.CIFAR10_DEV} is missing: this benchmark needs the cifar10-dev images")
    from image_classification.parameters.shared import ModelConfig
    from image_classification.parameters.train import TrainConfig

    params = harness.cifar10_dev_parameters()
    runtime = dict(params["runtime"]) | {"dask": None}
    train_config = TrainConfig(**params["train"])
    rows, started = [], time.perf_counter()
    for seed, index in harness.cifar10_dev_splits(params, args.seeds):
        train = (index["split"] == "train").to_numpy()  # labelled: unseen kinds have their own split
        for size in args.input_sizes:
            model = ModelConfig(**params["model"] | {"input_size": size})
            cache = args.cache.with_name(f"{args.cache.stem}_{size}px.safetensors")
            frozen = harness.cifar10_dev_features(index, model, runtime, train_config, cache)["tensors"]["pooled"]
            frozen = frozen.float().numpy()
            rows.append({"arm": f"frozen {size} px", "fold": seed, **separation(knn_scores(frozen[train], frozen),
                                                                                 index)})
            print(f"seed {seed}, {size} px: fine-tuning the whole backbone, {args.epochs} epochs", flush=True)
            backbone, accuracies = fine_tune(index, model, train_config, runtime, args.epochs, seed)
            tuned = pooled_of(backbone, index, model, runtime)
            rows.append({"arm": f"fine_tuned {size} px", "fold": seed,
                         **separation(knn_scores(tuned[train], tuned), index),
                         "val_accuracy": accuracies[-1], "epochs": args.epochs})
            print(f"seed {seed}, {size} px done ({time.perf_counter() - started:.0f} s): near, far AUROC frozen "
                  f"{rows[-2]['near_auroc']:.3f}, {rows[-2]['far_auroc']:.3f}; fine-tuned {rows[-1]['near_auroc']:.3f}, "
                  f"{rows[-1]['far_auroc']:.3f}", flush=True)
    frame = pd.DataFrame(rows)
    print(f"\ncifar10-dev, split seeds {args.seeds}, {args.epochs} epochs; pooled kNN (k = {K}) AUROC against the "
          "labelled test images (mean +- sd over seeds); the linear layer's validation accuracy (last epoch):\n")
    print("| arm | near AUROC | far AUROC | validation accuracy |\n|---|---|---|---|")
    for arm, group in frame.groupby("arm", sort=False):
        cells = [group[column].agg(["mean", "std"]) for column in ("near_auroc", "far_auroc", "val_accuracy")]
        print(f"| {arm} | " + " | ".join("" if math.isnan(cell["mean"]) else f"{cell['mean']:.3f}"
                                         + (f" +- {cell['std']:.3f}" if len(group) > 1 else "") for cell in cells)
              + " |")
    harness.write_results(args.results_file, "fine_tuned_pooled", rows, args)


if __name__ == "__main__":
    main()
