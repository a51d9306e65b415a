"""Patch evidence scoring, the way before against the project's way now, side by side in one run.

evaluate's ``score_patches`` measures every patch of every validation and test image against a memory
of valid train patches (:class:`image_classification.patches.PatchMemory`). Before, each block of 64
images formed |x|^2, -2 x.m and |m|^2 as three (patches x memory) tensors and summed them; now one fused
``addmm`` gives |m|^2 - 2 x.m for 512 patches at a time and |x|^2 is added after the minimum. This
benchmark fits one memory as the node does (10% coreset, at most 10,000 patches) and scores the same
images both ways, in interleaved rounds, printing the median seconds of each, the ratio, the largest
difference between their distances, and the matrix product's own time as the floor.

By default the patches are random float16 vectors of the cifar10-dev run's shape (1,400 valid train
images and 1,200 scored images of 14x14 patches of 152 channels); ``--cache`` reads them from a train
feature cache instead (a run's data/04_feature/backbone_features.safetensors: its first ``--train``
images fill the memory and the next ``--scored`` are scored, whatever their split).

    python -m benchmarks.patch_scoring              # ~2 min on 2 cores
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from benchmarks import harness
from image_classification.patches import PatchMemory


def distances_before(memory: PatchMemory, patches: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """PatchMemory.distances before this change: three full (patches x memory) terms per 64 images."""
    bank = memory.memory.float()
    bank_squared = (bank * bank).sum(1)
    out = []
    for start in range(0, len(patches), batch):
        chunk = patches[start:start + batch].float()
        flat = chunk.reshape(-1, chunk.shape[-1])
        squared = (flat * flat).sum(1, keepdim=True) - 2 * flat @ bank.T + bank_squared
        out.append(squared.amin(1).clamp_min(0).sqrt().reshape(len(chunk), -1))
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__, raw=True)
    parser.add_argument("--cache", type=Path, help="a train feature cache (safetensors) to take the patches from")
    parser.add_argument("--train", type=int, default=1400, help="valid train images in the memory")
    parser.add_argument("--scored", type=int, default=1200, help="images scored")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cache:
        from safetensors.torch import load_file

        patches = load_file(args.cache)["patches"]
        train, scored = patches[:args.train], patches[args.train:args.train + args.scored]
    else:
        generator = torch.Generator().manual_seed(0)
        train = torch.randn(args.train, 196, 152, generator=generator).abs().to(torch.float16)
        scored = torch.randn(args.scored, 196, 152, generator=generator).abs().to(torch.float16)
    start = time.perf_counter()
    memory = PatchMemory.fit(train, 0.1, 10000, 1, seed=0)
    fit_s = time.perf_counter() - start
    print(f"memory of {len(memory.memory)} of {memory.patches_seen} patches fitted in {fit_s:.1f} s; scoring "
          f"{len(scored)} images x {scored.shape[1]} patches x {scored.shape[2]} channels, {args.threads} threads")

    flat, bank_t = scored.reshape(-1, scored.shape[-1]).float(), memory.memory.float().T.contiguous()
    block = torch.empty(512, bank_t.shape[1])

    def matmul_alone() -> None:  # the products the distances need, 512 patches at a time, nothing else
        for start in range(0, len(flat) - 511, 512):
            torch.mm(flat[start:start + 512], bank_t, out=block)

    times, results = harness.interleaved({"before": lambda: distances_before(memory, scored),
                                          "now": lambda: memory.distances(scored),
                                          "matmul floor": matmul_alone}, args.rounds)
    before, now = results["before"], results["now"]
    median = harness.medians(times)
    for name, seconds in median.items():
        print(f"  {name:13s} {seconds:6.2f} s (median of {args.rounds}; {len(scored) / seconds:7.1f} img/s)")
    print(f"now is {median['before'] / median['now']:.2f}x faster than before, "
          f"{median['now'] / median['matmul floor']:.2f}x the matrix product alone; "
          f"largest difference of a distance {float((before - now).abs().max()):.2e} "
          f"(largest distance {float(before.max()):.2f})")
    harness.write_results(args.results_file, "patch_scoring", [
        {"arm": name, "seconds": seconds, "img_s": len(scored) / seconds,
         **({"largest_difference": float((before - now).abs().max())} if name == "now" else {})}
        for name, seconds in median.items()], args)


if __name__ == "__main__":
    main()
