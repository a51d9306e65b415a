"""Which backbone maps the patch classifier should read, and whether they should be trained (decision 0030).

The patch classifier (``PatchClassifier``, image_classification.patches) reads the last stride-8 and
stride-16 maps of EfficientNet-Lite0 (``patches.STRIDES``: blocks 3 and 5, 40 + 112 channels), each
averaged over 3x3 neighbourhoods onto a 14 x 14 grid. On the five grouped folds of
``patch_classifier`` (``grouped_folds(y, groups, 5, seed=42)`` on defects-dev), every classifier
fitted on its fold's train rows with the project's settings and fit seed ``seed`` (0 for ``--seeds 1``,
the same in every fold), this benchmark prints test and validation AUROC, mean +- sd, and the test
AUROC of every fold, of the arms:

- ``frozen``           the pipeline's stride 8 + 16 patch vectors, read from the defects-dev feature
                       cache (the reference);
- ``stride32``         + the stride-32 block before the 1x1 convolution head (block 7, 320 channels,
                       7 x 7, brought to the same grid by the same pooling): 472 channels;
- ``stride4``          + the stride-4 block (block 2, 24 channels, 56 x 56): 176 channels;
- ``stride32-beside``  the ``frozen`` and ``stride32`` classifiers side by side: an image's defect
                       logit is the mean of the two classifiers' (no new fit);
- ``stride4-beside``   the same with the ``stride4`` classifier;
- ``fine-tuned``       blocks 3-5 trained end to end with the patch classifier's objective: the
                       fold's ``frozen`` classifier (its 64-unit network, standardisation and top-10
                       mean) on the patch vectors that blocks 3-5 compute from the cached output of
                       blocks 0-2 (frozen), binary cross-entropy on image labels, batch-norm statistics
                       frozen (the blocks in eval mode), a random quarter turn and flip of each image's
                       cached maps, AdamW (weight decay 1e-3) at 1e-4 for the blocks and 1e-3 for the
                       network, batches of 32, ``--fine-tune-epochs`` epochs; the epoch of best
                       validation AUROC is kept and its test AUROC reported.

    python -m benchmarks.patch_maps                          # every arm, 5 folds (most of it the fine-tuned arm)
    python -m benchmarks.patch_maps --fine-tune-epochs 0     # the five frozen arms only
    python -m benchmarks.patch_maps --arms frozen --folds 2  # a smoke run

The extra maps come from one pass of the frozen backbone over the 1,665 photos, read by the project's
own loader (``image_loader``: decoding and the backbone's transform), cached in ``--maps-cache``
(/tmp/patch_maps_features.safetensors): the stride-4 and stride-32 patch vectors, and the output of
blocks 0-2 (float16, 250 MB) for the fine-tuned arm. The pass also recomputes the pipeline's stride
8 + 16 vectors and prints how far they are from the defects-dev cache's (that cache ran on ONNX Runtime).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from benchmarks import harness
from benchmarks.harness import grouped_folds
from image_classification.patches import PatchClassifier, patch_blocks, patch_grid_features

BACKBONE, GRID = "efficientnet_lite0", 14
ARMS = ("frozen", "stride32", "stride4", "stride32-beside", "stride4-beside", "fine-tuned")
MAPS_CACHE = Path("/tmp/patch_maps_features.safetensors")


def extract_maps(manifest, cache: Path, reference: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stride-4 and stride-32 patch vectors and blocks 0-2's output of every photo, cached in ``cache``."""
    from benchmarks.harness import image_loader
    from image_classification.backbones import backbone_spec, build_backbone

    def compute() -> dict:
        spec, backbone = backbone_spec(BACKBONE), build_backbone(BACKBONE)
        # the last block of each stride short of the 1x1 convolution head (the last block, 1280 channels)
        (stride4, stride8, stride16, stride32) = patch_blocks(backbone[:-1], spec.input_size, (4, 8, 16, 32))
        backbone.eval()
        paths = [str(harness.DEFECTS_DEV / path) for path in manifest["path"]]
        parts: dict[str, list[torch.Tensor]] = {"stride4": [], "stride32": [], "early": [], "pipeline": []}
        start = time.perf_counter()
        with torch.inference_mode():
            for images, errors in image_loader(paths, spec, 32, 0):
                if any(errors):
                    raise SystemExit(f"unreadable images: {[e for e in errors if e][:3]}")
                x, taps = images, {}
                for index, block in enumerate(backbone[:stride32 + 1]):
                    x = taps[index] = block(x)
                parts["early"].append(taps[stride4].to(torch.float16))
                parts["stride4"].append(patch_grid_features([taps[stride4]], GRID))
                parts["stride32"].append(patch_grid_features([taps[stride32]], GRID))
                parts["pipeline"].append(patch_grid_features([taps[stride8], taps[stride16]], GRID))
        tensors = {name: torch.cat(values) for name, values in parts.items()}
        difference = (tensors.pop("pipeline").float() - reference.float()).abs()
        print(f"blocks {stride4} (stride 4), {stride8} and {stride16} (8, 16), {stride32} (32) of {len(backbone)}")
        print(f"extracted {len(paths)} images in {time.perf_counter() - start:.0f} s; stride 8 + 16 vectors "
              f"recomputed here differ from the feature cache's by {difference.mean():.4f} on average "
              f"(largest {difference.max():.3f}; their mean magnitude {reference.float().abs().mean():.3f})")
        if difference.mean() > 0.01:
            raise SystemExit("the photos were not read as the pipeline reads them: nothing cached")
        return {"tensors": tensors, "metadata": {"blocks": [stride4, stride8, stride16, stride32]}}

    key = (f"{BACKBONE}|{GRID}|patch maps stride 4, 32 before the head, early|{len(manifest)}|{manifest['sha256'].iloc[0]}|"
           f"{manifest['sha256'].iloc[-1]}")
    return harness.feature_cache(cache, key, compute)["tensors"]


def auroc(y: np.ndarray, defect_logits: torch.Tensor) -> float:
    """AUROC of valid (1) against minus the defect logit."""
    return float(roc_auc_score(y, -defect_logits.double().numpy()))


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.3f}"


def quarter_turns(maps: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) map of a batch turned by a random multiple of 90 degrees, and flipped or not."""
    turned = []
    for feature_map in maps:
        feature_map = torch.rot90(feature_map, int(torch.randint(4, (1,))), dims=(1, 2))
        turned.append(feature_map.flip(2) if torch.rand(1).item() < 0.5 else feature_map)
    return torch.stack(turned)


class TunedPatches(nn.Module):
    """Patch vectors from blocks 0-2's output: blocks 3-5, then the pipeline's pooling, standardised as
    the frozen classifier standardised its inputs."""

    def __init__(self, blocks: nn.Sequential, taps: tuple[int, ...], mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.blocks, self.taps, self.mean, self.std = blocks, taps, mean, std

    def forward(self, early: torch.Tensor) -> torch.Tensor:
        x, tapped = early, []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                tapped.append(x)
        return (patch_grid_features(tapped, GRID, dtype=torch.float32) - self.mean) / self.std


def fine_tune(backbone: nn.Sequential, early: torch.Tensor, y: np.ndarray, rows: dict, frozen: PatchClassifier,
              epochs: int, seed: int) -> dict:
    """The fine-tuned arm on one fold (see the module's text): kept epoch, its val and test AUROC, every epoch's."""
    (early_block,) = patch_blocks(backbone, 224, (4,))  # block 2: blocks 0-2 stay frozen, their output cached
    taps = tuple(index - early_block - 1 for index in patch_blocks(backbone, 224))  # blocks 3 and 5, from 0
    tuned = TunedPatches(copy.deepcopy(backbone[early_block + 1:early_block + 2 + taps[-1]]), taps, frozen.mean,
                         frozen.std).requires_grad_(True)
    network = copy.deepcopy(frozen.network).requires_grad_(True)
    optimiser = torch.optim.AdamW([{"params": tuned.parameters(), "lr": 1e-4},
                                   {"params": network.parameters(), "lr": 1e-3}], weight_decay=1e-3)
    invalid = torch.as_tensor(1 - y, dtype=torch.float32)
    train, found = rows["train"], []

    def logits(selected: np.ndarray) -> torch.Tensor:
        network.eval()
        with torch.inference_mode():
            return torch.cat([frozen.image_logits(network(tuned(early[chunk].float())).squeeze(-1))
                              for chunk in torch.as_tensor(selected).split(64)])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            tuned.eval()  # batch-norm statistics frozen, stochastic depth off; the weights still learn
            network.train()
            for batch in torch.as_tensor(train)[torch.randperm(len(train))].split(32):
                image_logits = frozen.image_logits(network(tuned(quarter_turns(early[batch].float()))).squeeze(-1))
                loss = nn.functional.binary_cross_entropy_with_logits(image_logits, invalid[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            found.append((auroc(y[rows["val"]], logits(rows["val"])), auroc(y[rows["test"]], logits(rows["test"]))))
            print(f"  fine-tuned epoch {epoch + 1}: val AUROC {found[-1][0]:.3f}, test AUROC {found[-1][1]:.3f}",
                  flush=True)
    kept = int(np.argmax([val for val, _ in found]))
    return {"epoch": kept + 1, "val": found[kept][0], "test": found[kept][1],
            "test_by_epoch": " ".join(f"{test:.3f}" for _, test in found)}


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="default: all six")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1, help="fit seeds 0 .. SEEDS-1 in every fold")
    parser.add_argument("--fine-tune-epochs", type=int, default=4, help="0 leaves the fine-tuned arm out")
    parser.add_argument("--cache", type=Path, default=harness.DEFECTS_DEV_CACHE, help="the pipeline's patches")
    parser.add_argument("--maps-cache", type=Path, default=MAPS_CACHE, help="the other maps, written on first use")
    args = parser.parse_args(argv)
    arms = [arm for arm in args.arms if arm != "fine-tuned" or args.fine_tune_epochs > 0]
    torch.set_num_threads(2)
    manifest, y, groups = harness.defects_dev()
    patches = harness.defects_dev_features(manifest, harness.DEFECTS_DEV, BACKBONE, GRID, args.cache)["patches"]
    maps = extract_maps(manifest, args.maps_cache, patches) if set(arms) - {"frozen"} else {}
    inputs = {"frozen": patches}
    for extra in ("stride32", "stride4"):
        if {extra, f"{extra}-beside"} & set(arms):
            inputs[extra] = torch.cat([patches, maps[extra]], 2)
    backbone = None
    if "fine-tuned" in arms:
        from image_classification.backbones import build_backbone

        backbone = build_backbone(BACKBONE).eval()
    test_auc: dict[str, list[float]] = {arm: [] for arm in arms}
    val_auc: dict[str, list[float]] = {arm: [] for arm in arms}
    results = []
    for number, rows in enumerate(grouped_folds(y, groups, args.folds, seed=42)):
        train, val, test = rows["train"], rows["val"], rows["test"]
        for seed in range(args.seeds):
            fitted, logits, extra = {}, {}, {}
            for name, vectors in inputs.items():
                start = time.perf_counter()
                fitted[name] = PatchClassifier.fit(vectors[train], y[train], seed=seed)
                extra[name] = {"seconds": time.perf_counter() - start}
                logits[name] = {split: fitted[name].image_logits(fitted[name].patch_logits(vectors[rows[split]]))
                                for split in ("val", "test")}
            for beside in ("stride32", "stride4"):
                logits[f"{beside}-beside"] = {split: (logits["frozen"][split] + logits[beside][split]) / 2
                                              for split in ("val", "test")} if beside in logits else None
            for arm in arms:
                if arm == "fine-tuned":
                    start = time.perf_counter()
                    tuned = fine_tune(backbone, maps["early"], y, rows, fitted["frozen"], args.fine_tune_epochs, seed)
                    val_auc[arm].append(tuned.pop("val"))
                    test_auc[arm].append(tuned.pop("test"))
                    extra[arm] = {**tuned, "seconds": time.perf_counter() - start}
                else:
                    val_auc[arm].append(auroc(y[val], logits[arm]["val"]))
                    test_auc[arm].append(auroc(y[test], logits[arm]["test"]))
                results.append({"arm": arm, "fold": f"{number} seed {seed}", "test_auroc": test_auc[arm][-1],
                                "val_auroc": val_auc[arm][-1], **extra.get(arm, {})})
        print(f"fold {number + 1} of {args.folds} done: "
              + ", ".join(f"{arm} {test_auc[arm][-1]:.3f}" for arm in arms), flush=True)
    print(f"\ndefects-dev, {BACKBONE} patch vectors (grid {GRID}), {args.folds} grouped folds x {args.seeds} "
          f"seed{'s' if args.seeds > 1 else ''} (fit seed {', '.join(map(str, range(args.seeds)))})")
    print(f"{'arm':16s} {'test AUROC':>15s} {'val AUROC':>15s}  test AUROC per fold")
    for arm in arms:
        print(f"{arm:16s} {spread(test_auc[arm]):>15s} {spread(val_auc[arm]):>15s}  "
              + " ".join(f"{value:.3f}" for value in test_auc[arm]))
    harness.write_results(args.results_file, "patch_maps", results, args)


if __name__ == "__main__":
    main()
