"""Decoding a large JPEG to model input: full decode against Pillow's draft mode, side by side.

predict (through ``inference.ImageFiles``) decodes JPEGs with ``draft_size`` set to the model's
input size: the JPEG decoder then scales by 1/2, 1/4 or 1/8 while decoding (it skips most of the
inverse DCT), keeping both sides at least 224 px, and the resize to 224 x 224 starts from a
much smaller picture. This benchmark times both ways from the file's bytes to the normalised
(3, 224, 224) tensor, with the project's own ``images.decode_rgb`` and ``preprocess_transform``,
and says how far apart the two tensors are. Run it from the repository root:

    python -m benchmarks.decode_draft            # 4000x3000 (a 12 MP camera photo) and 1600x1200
    python -m benchmarks.decode_draft --repeats 5

The photo is scikit-image's astronaut, enlarged, with sensor-like grain added so that it
compresses like a camera picture (2.6 MB at 4000x3000, quality 90). Most of a draft decode is
reading the compressed data, so the saving grows as the file gets smoother: a row without grain
shows the other end.
"""

from __future__ import annotations

import io
import statistics

import numpy as np
import torch
from PIL import Image

from benchmarks import harness
from image_classification.images import decode_rgb
from image_classification.backbones import backbone_spec
from image_classification.model import preprocess_transform


def camera_like_jpeg(width: int, height: int, grain: float = 6.0, seed: int = 0) -> bytes:
    """A real photo enlarged to ``width`` x ``height`` with sensor-like grain (its standard
    deviation in grey levels), as a quality-90 JPEG."""
    import skimage.data

    photo = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    grain = np.random.default_rng(seed).normal(0, grain, (height, width, 3))
    pixels = np.clip(np.asarray(photo, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def to_model_input(data: bytes, draft_size: int | None, transform) -> torch.Tensor:
    return transform(decode_rgb(data, draft_size=draft_size)[0])


def main(argv: list[str] | None = None) -> None:
    parser = harness.parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["4000x3000", "4000x3000/smooth", "1600x1200"],
                        help="WIDTHxHEIGHT of each JPEG; /smooth: without grain")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timings of each way, median kept")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # decoding runs in single-threaded DataLoader workers
    spec = backbone_spec("efficientnet_lite0")
    transform = preprocess_transform(spec)

    rows = []
    for size in args.sizes:
        width, height = (int(side) for side in size.lower().split("/")[0].split("x"))
        data = camera_like_jpeg(width, height, grain=0.0 if size.endswith("/smooth") else 6.0)
        ways = {"full": None, "draft": spec.input_size}
        seconds, _ = harness.interleaved({way: lambda size=draft_size: to_model_input(data, size, transform)
                                          for way, draft_size in ways.items()}, args.repeats)
        full, draft = (to_model_input(data, draft_size, transform) for draft_size in ways.values())
        drafted = decode_rgb(data, draft_size=spec.input_size)[0].size
        rows.append((size, len(data) / 1e6, drafted, statistics.median(seconds["full"]),
                     statistics.median(seconds["draft"]), float((full - draft).abs().mean())))

    print(f"JPEG to normalised {spec.input_size}x{spec.input_size} model input, median of {args.repeats}, one thread:")
    header = (f"{'image':>17s} {'file MB':>8s} {'draft decodes to':>17s} {'full ms':>9s} {'draft ms':>9s} "
              f"{'speed-up':>9s} {'mean |input diff|':>18s}")
    print(header + "\n" + "-" * len(header))
    for size, megabytes, drafted, full_s, draft_s, difference in rows:
        print(f"{size:>17s} {megabytes:8.2f} {f'{drafted[0]}x{drafted[1]}':>17s} {full_s * 1e3:9.1f} "
              f"{draft_s * 1e3:9.1f} {f'x{full_s / draft_s:.1f}':>9s} {difference:18.4f}")
    print("(inputs are normalised to about [-1, 1]; the difference is that of two antialiasing filters)")
    harness.write_results(args.results_file, "decode_draft", [
        {"arm": f"{way}, {size}", "file_mb": megabytes, "ms": way_s * 1e3,
         **({"speed_up": full_s / draft_s, "mean_input_difference": difference} if way == "draft" else {})}
        for size, megabytes, drafted, full_s, draft_s, difference in rows
        for way, way_s in (("full", full_s), ("draft", draft_s))], args)


if __name__ == "__main__":
    main()
