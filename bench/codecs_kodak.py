"""Classical codecs on Kodak: runs other_codecs.py's evaluation of $KODAK_DIR (the
24 Kodak PNGs) into ROOT and prints each codec's MS-SSIM at 0.370 / 0.677 / 1.051 bpp,
linearly interpolated on its mean (bpp, MS-SSIM) curve, the operating points of the
authors' three models (the original README's table).

    python bench/codecs_kodak.py [--root DIR] [--workers 2] [--codecs jpeg,webp,jp2k,avif]
                                 [--no-run]

Without --root the measures go to a temporary folder. --no-run only reads an existing ROOT.
Last line: jpeg=a/b/c webp=a/b/c jp2k=a/b/c avif=a/b/c
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imgcomp.base.image_files import resolve_images
from imgcomp.evaluation.baselines import CODECS, main
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    mean_measures,
    read_measures_csv,
)

BPP_POINTS = (0.370, 0.677, 1.051)


def interpolated_ms_ssim(codec_dir: Path) -> list[float]:
    """MS-SSIM of the mean curve in `codec_dir`/*/measures.csv at BPP_POINTS (NaN outside)."""
    means = [mean_measures(read_measures_csv(p)) for p in codec_dir.glob(f"*/{MEASURES_CSV}")]
    points = sorted((m.bpp, m.ms_ssim) for m in means)
    bpp, msssim = np.array(points).T
    return [float(v) for v in np.interp(BPP_POINTS, bpp, msssim, left=np.nan, right=np.nan)]


def report(root: Path, dataset: str, codecs: list[str]) -> None:
    figures = {}
    for name in codecs:
        codec_dir = root / dataset / name
        if not any(codec_dir.glob(f"*/{MEASURES_CSV}")):
            print(f"{name}: no measures under {codec_dir}")
            continue
        figures[name] = "/".join(f"{v:.3f}" for v in interpolated_ms_ssim(codec_dir))
        print(f"{name}: MS-SSIM at {'/'.join(map(str, BPP_POINTS))} bpp = {figures[name]}")
    print(" ".join(f"{name}={value}" for name, value in figures.items()))


def run(root: Path, kodak: str, codecs: list[str], workers: int, no_run: bool) -> int:
    if not no_run:
        start = time.perf_counter()
        status = main([kodak, "--out", str(root), "--codecs", ",".join(codecs),
                       "--workers", str(workers)])
        if status:
            return status
        print(f"\nwall time: {time.perf_counter() - start:.0f} s with {workers} worker(s)")
    report(root, resolve_images(kodak)[0], codecs)
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="output root (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--no-run", action="store_true", help="only read an existing --root")
    args = parser.parse_args()
    kodak = os.environ.get("KODAK_DIR")
    if not kodak:
        parser.error("set KODAK_DIR to the folder of the 24 Kodak PNGs")
    codecs = args.codecs.split(",")
    if args.root is not None:
        return run(args.root, kodak, codecs, args.workers, args.no_run)
    if args.no_run:
        parser.error("--no-run needs --root")
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp), kodak, codecs, args.workers, no_run=False)


if __name__ == "__main__":
    sys.exit(cli())
