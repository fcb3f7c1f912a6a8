"""Visual comparison: a crop of one image as the original, our model and classical codecs at
about our bit rate, with bpp and MS-SSIM (of the whole image) in the labels.

    imgcomp crops IMAGE --model LOG_DIR [--box X,Y,W,H] [--codecs jpeg,webp,avif]
                            [-o figs/kodak_crops.png]

Our bpp is that of the real bitstream (`imgcomp encode`); each codec gets the setting whose
real file size comes closest to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcomp.base.atomic import atomic_path
from imgcomp.base.image_files import ImageReadError, read_image
from imgcomp.checkpoints.log_dirs import CheckpointError
from imgcomp.checkpoints.zoo import load_model
from imgcomp.evaluation.baselines import CODECS, Codec, roundtrip
from imgcomp.evaluation.results import measure


@dataclass(frozen=True)
class Panel:
    label: str
    image: np.ndarray  # the whole H x W x 3 uint8 image
    bpp: float | None = None
    ms_ssim: float | None = None
    psnr: float | None = None

    def title(self) -> str:
        if self.bpp is None:
            return self.label
        return f"{self.label}\n{self.bpp:.3f} bpp, MS-SSIM {self.ms_ssim:.3f}, {self.psnr:.1f} dB"


def closest_setting(codec: Codec, original: np.ndarray, target_bpp: float
                    ) -> tuple[int, float, np.ndarray]:
    """(setting, bpp, decoded image) of `codec` whose bpp is closest to `target_bpp`.

    Bisects the setting range, assuming bpp grows with quality ('q') and falls with the
    compression ratio ('rate'); the final pick compares the two bracketing settings.
    """
    pixels = original.shape[0] * original.shape[1]
    cache: dict[int, tuple[float, np.ndarray]] = {}

    def bpp_of(value: int) -> float:
        if value not in cache:
            bits, decoded = roundtrip(codec, original, value)
            cache[value] = (bits / pixels, decoded)
        return cache[value][0]

    rising = codec.unit == "q"
    low = codec.min_value
    high = codec.max_value if codec.max_value is not None else max(1, round(240 / target_bpp))
    # Invariant: the answer lies in [low, high]; shrink until they are neighbours.
    while high - low > 1:
        mid = (low + high) // 2
        if (bpp_of(mid) < target_bpp) == rising:
            low = mid
        else:
            high = mid
    best = min((low, high), key=lambda v: abs(bpp_of(v) - target_bpp))
    return best, *cache[best]


def codec_panels(original: np.ndarray, target_bpp: float, codec_names: Sequence[str]
                 ) -> list[Panel]:
    """Each codec's panel at the setting whose real file size comes closest to target_bpp."""
    pixels = original.shape[0] * original.shape[1]
    panels = []
    for name in codec_names:
        codec = CODECS[name]
        value, bpp, decoded = closest_setting(codec, original, target_bpp)
        panels.append(Panel(f"{name.upper()} ({codec.unit}={value})", decoded,
                            *measure(original, decoded, bpp * pixels)))
    return panels


def build_panels(original: np.ndarray, model_dir: Path, codec_names: Sequence[str]
                 ) -> list[Panel]:
    pixels = original.shape[0] * original.shape[1]
    model = load_model(model_dir)
    data = model.compress(original)
    ours = model.decompress(data)
    return [Panel("Original", original),
            Panel("Ours", ours, *measure(original, ours, 8 * len(data))),
            *codec_panels(original, 8 * len(data) / pixels, codec_names)]


def draw(panels: Sequence[Panel], box: tuple[int, int, int, int], path: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, w, h = box
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2 * h / w + 0.9))
    for ax, panel in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(panel.image[y:y + h, x:x + w], interpolation="nearest")
        ax.set_title(panel.title(), fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # keeps the suffix, which names the file type
        fig.savefig(tmp, dpi=150)
    plt.close(fig)


def parse_box(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box wants X,Y,W,H integers, got {text!r}") from None
    if min(x, y) < 0 or min(w, h) <= 0:
        raise argparse.ArgumentTypeError(f"--box {text!r}: X,Y must be >= 0 and W,H > 0")
    return x, y, w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgcomp crops",
        description="Crop of one image: original, our model and classical codecs at about our "
                    "bpp (real file sizes), bpp and whole-image MS-SSIM / PSNR in the labels.")
    p.add_argument("image", type=Path, help="image file, e.g. ../shared/data/kodak/kodim23.png")
    p.add_argument("--model", type=Path, required=True, help="log dir of the model to show")
    p.add_argument("--box", type=parse_box, help="crop X,Y,W,H (default: central 192x192)")
    p.add_argument("--codecs", default="jpeg,webp,avif",
                   help="comma separated codecs (default: jpeg,webp,avif)")
    p.add_argument("-o", "--output", type=Path, default=Path("figs/kodak_crops.png"),
                   help="figure file (default: figs/kodak_crops.png)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = [c for c in args.codecs.split(",") if c]
    unknown = [c for c in names if c not in CODECS]
    missing = [c for c in names if c in CODECS and not CODECS[c].available()]
    if unknown or missing:
        problem = f"unknown codecs {unknown}" if unknown else f"this Pillow lacks {missing}"
        print(f"error: --codecs: {problem} (known: {','.join(CODECS)})", file=sys.stderr)
        return 2
    try:
        original = read_image(args.image)
    except ImageReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    height, width = original.shape[:2]
    box = args.box or (max(width - 192, 0) // 2, max(height - 192, 0) // 2,
                       min(192, width), min(192, height))
    if box[0] + box[2] > width or box[1] + box[3] > height:
        print(f"error: --box {box} does not fit in {args.image} ({width}x{height})",
              file=sys.stderr)
        return 2
    try:
        panels = build_panels(original, args.model, names)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    draw(panels, box, args.output, f"{args.image.name}, crop {box[2]}x{box[3]} at "
                                   f"({box[0]},{box[1]}); model {args.model.name}")
    for panel in panels[1:]:
        print(f"{panel.label:16s} {panel.bpp:.4f} bpp  MS-SSIM {panel.ms_ssim:.4f}  "
              f"PSNR {panel.psnr:.2f}")
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
