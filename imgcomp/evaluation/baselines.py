"""Classical codecs as baselines: Pillow's JPEG, WebP, JPEG 2000 (OpenJPEG) and AVIF, measured
exactly as val.py measures our model (real encoded size, MS-SSIM and PSNR of the decoded RGB).

    python other_codecs.py IMAGES [--codecs jpeg,webp,jp2k,avif] [--out OTHER_CODECS_ROOT]
                                  [--qualities [CODEC=]V,V,... ...] [--workers N]

writes ``OTHER_CODECS_ROOT/<DATASET>/<codec>/<setting>/measures.csv`` (header
``img_name,bpp,ms-ssim,psnr``, one row per image). A setting folder is ``q_075`` (quality, for
jpeg / webp / avif) or ``rate_048`` (JPEG 2000 compression ratio over 24 bpp RGB: about
0.5 bpp); the number after ``_`` is the setting, its whole part zero-padded so folders sort.
WebP takes fractional qualities (libwebp's quality is a float): ``q_075.5``.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL
from PIL import Image, features
from tqdm import tqdm

from imgcomp.base.image_files import ImageReadError, read_image, resolve_images
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    Measure,
    mean_measures,
    measure,
    write_measures_csv,
)

Setting = int | float  # a quality or compression ratio; float only where Codec.fractional
DEFAULT_RESULTS_ROOT = "other_codecs"
RESULTS_ROOT_ENV = "OTHER_CODECS_ROOT"
# The measures committed with the project (Kodak, BSDS500 val), found from a checkout.
COMMITTED_RESULTS_ROOT = Path(__file__).resolve().parents[2] / "results" / "other_codecs"


def results_root(path: str | os.PathLike | None = None) -> Path:
    """Root of the codecs' measures (other_codecs.py writes it, plotter.py reads it): `path` if
    given, else $OTHER_CODECS_ROOT, else ./other_codecs."""
    return Path(path or os.environ.get(RESULTS_ROOT_ENV) or DEFAULT_RESULTS_ROOT)


def results_roots_to_read(path: str | os.PathLike | None = None) -> list[Path]:
    """Where readers (plotter.py, imgcomp report) look for the codecs' measures, in order:
    `path` or $OTHER_CODECS_ROOT alone if given; else ./other_codecs (other_codecs.py's own
    output), then the committed results/other_codecs of this checkout."""
    if path or os.environ.get(RESULTS_ROOT_ENV):
        return [results_root(path)]
    return [results_root(), COMMITTED_RESULTS_ROOT]


@dataclass(frozen=True)
class Codec:
    name: str
    pillow_format: str
    feature: str  # PIL.features name, to tell whether this Pillow build has the codec
    unit: str  # setting folder prefix
    grid: tuple[Setting, ...]  # default settings, spanning ~0.1..1.5 mean bpp on Kodak
    min_value: int
    max_value: int | None
    save_options: Callable[[Setting], dict[str, Any]]
    fractional: bool = False  # whether the encoder takes non-integer settings

    def folder(self, value: Setting) -> str:
        whole = int(value)
        fraction = "" if value == whole else str(float(value)).partition(".")[2]
        return f"{self.unit}_{whole:03d}" + (f".{fraction}" if fraction else "")

    def available(self) -> bool:
        return bool(features.check(self.feature))

    def check(self, value: Setting) -> None:
        """ValueError if `value` is not a valid setting of this codec."""
        if value != int(value) and not self.fractional:
            raise ValueError(f"{self.name}: setting {value} must be a whole number")
        if value < self.min_value or (self.max_value is not None and value > self.max_value):
            upper = "" if self.max_value is None else f"..{self.max_value}"
            raise ValueError(f"{self.name}: setting {value} is outside {self.min_value}{upper}")

    def encode(self, img: Image.Image, value: Setting) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=self.pillow_format, **self.save_options(value))
        return buf.getvalue()


# Pillow's defaults except where noted; the grids were chosen from mean Kodak bpp (Pillow 13).
CODECS: dict[str, Codec] = {
    # Default 4:2:0 chroma subsampling, no Huffman optimisation; q 1 and 3 differ little
    # (~0.17 bpp), so JPEG cannot reach 0.1 bpp.
    "jpeg": Codec("jpeg", "JPEG", "jpg", "q", (3, 5, 8, 10, 13, 16, 20, 25, 30, 40, 50, 60, 70, 80),
                  1, 100, lambda q: {"quality": q}),
    # method=6 (Pillow's default is 4): slowest and best, ~7 % fewer bits at equal MS-SSIM on
    # Kodak, and still cheaper than computing MS-SSIM; it gives the documented figures. q 75.5
    # to 78 fill the step from 0.94 to 1.15 bpp, where the shipped hi model is compared.
    "webp": Codec("webp", "WEBP", "webp", "q",
                  (0, 5, 10, 20, 30, 40, 50, 60, 70, 75, 75.5, 75.75, 76, 78, 80, 85),
                  0, 100, lambda q: {"quality": q, "method": 6}, fractional=True),
    # quality_layers=[r]: one layer at compression ratio r over 24 bpp RGB, so bpp ~ 24 / r.
    # irreversible=True (the lossy 9/7 wavelet; Pillow's default is the lossless 5/3) gives the
    # documented Kodak figures. Pillow's default mct=0 (no RGB->YCbCr) is kept for the same
    # reason, although mct=1 would gain ~0.02-0.04 MS-SSIM.
    "jp2k": Codec("jp2k", "JPEG2000", "jpg_2000", "rate",
                  (240, 160, 120, 96, 80, 64, 48, 40, 32, 24, 20, 16), 1, None,
                  lambda r: {"quality_mode": "rates", "quality_layers": [r], "irreversible": True}),
    "avif": Codec("avif", "AVIF", "avif", "q",
                  (10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75),
                  0, 100, lambda q: {"quality": q}),
}


def roundtrip(codec: Codec, original: np.ndarray, value: Setting) -> tuple[int, np.ndarray]:
    """(encoded size in bits, decoded H x W x 3 uint8) of `original` at one setting."""
    data = codec.encode(Image.fromarray(original), value)
    decoded = read_image(data, name=f"{codec.name} {codec.folder(value)} output")
    if decoded.shape != original.shape:  # measures would compare different pixels
        raise RuntimeError(f"{codec.name} decoded {decoded.shape}, expected {original.shape}")
    return len(data) * 8, decoded


class _Task(NamedTuple):
    path: Path
    codec: str
    values: tuple[Setting, ...]


class _Result(NamedTuple):
    task: _Task
    measures: list[Measure]
    error: str | None  # why the image could not be read


def _run_task(task: _Task) -> _Result:
    # Errors travel back as values: an exception would end a pool's whole iteration.
    try:
        original = read_image(task.path)
    except ImageReadError as exc:
        return _Result(task, [], str(exc))
    codec = CODECS[task.codec]
    measures = []
    for value in task.values:
        num_bits, decoded = roundtrip(codec, original, value)
        measures.append(Measure(task.path.name, *measure(original, decoded, num_bits)))
    return _Result(task, measures, None)


def _init_worker() -> None:
    # One torch thread per process: the processes already share out the cores.
    import torch

    torch.set_num_threads(1)


def evaluate(
    paths: Sequence[Path], settings: dict[str, Sequence[Setting]], workers: int = 1
) -> dict[str, dict[Setting, list[Measure]]]:
    """codec -> setting -> measures of the readable images, in `paths` order.

    Unreadable images get a warning on stderr and are left out; a progress bar runs on stderr.
    """
    tasks = [_Task(p, name, tuple(vals)) for p in paths for name, vals in settings.items()]
    per_image: dict[tuple[str, Path], list[Measure]] = {}
    unreadable: set[Path] = set()
    with tqdm(total=len(tasks), unit="task", desc="encoding", dynamic_ncols=True) as bar:
        if workers > 1:
            # spawn: forking a process that has loaded torch may deadlock its thread pools.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker) as pool:
                results = _gather(pool.imap_unordered(_run_task, tasks), bar)
        else:
            results = _gather(map(_run_task, tasks), bar)
    for result in results:
        if result.error is None:
            per_image[result.task.codec, result.task.path] = result.measures
        elif result.task.path not in unreadable:
            unreadable.add(result.task.path)
            print(f"warning: {result.error}; skipping it", file=sys.stderr)
    return {
        name: {
            value: [per_image[name, p][i] for p in paths if (name, p) in per_image]
            for i, value in enumerate(vals)
        }
        for name, vals in settings.items()
    }


def _gather(results: Iterable[_Result], bar: tqdm) -> list[_Result]:
    gathered = []
    for result in results:
        gathered.append(result)
        bar.update()
    return gathered


def _parse_setting(text: str) -> Setting:
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(text)
    return int(value) if value.is_integer() else value  # so 75.0 names folder q_075, as 75


def _parse_qualities(specs: Sequence[str], codecs: Sequence[str]
                     ) -> dict[str, tuple[Setting, ...]]:
    """`V,V` (every codec) or `CODEC=V,V` items -> per-codec settings; ValueError if invalid."""
    settings = {name: CODECS[name].grid for name in codecs}
    shared: tuple[Setting, ...] | None = None
    explicit: dict[str, tuple[Setting, ...]] = {}
    for spec in specs:
        name, sep, values_text = spec.rpartition("=")
        try:
            values = tuple(sorted({_parse_setting(v) for v in values_text.split(",")
                                   if v.strip()}))
        except ValueError:
            raise ValueError(f"--qualities {spec!r}: settings must be numbers") from None
        if not values:
            raise ValueError(f"--qualities {spec!r} names no settings")
        if not sep:
            shared = values
        elif name not in codecs:
            raise ValueError(f"--qualities {spec!r}: {name!r} is not one of the chosen codecs "
                             f"({', '.join(codecs)})")
        else:
            explicit[name] = values
    for name in codecs:
        settings[name] = explicit.get(name, shared or settings[name])
        for value in settings[name]:
            CODECS[name].check(value)
    return settings


def _print_table(codec: Codec, by_value: dict[Setting, list[Measure]], folder: Path) -> None:
    num_images = len(next(iter(by_value.values())))
    print(f"\n{codec.name} (Pillow {PIL.__version__}, {codec.feature} "
          f"{features.version(codec.feature)}; {num_images} images) -> {folder}")
    print(f"  {'setting':<10} {'bpp':>7} {'ms-ssim':>8} {'psnr':>7}")
    for value, measures in by_value.items():
        means = mean_measures(measures)
        print(f"  {codec.folder(value):<10} {means.bpp:7.4f} {means.ms_ssim:8.5f} "
              f"{means.psnr:7.3f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="other_codecs.py",
        description="Measure Pillow's classical codecs (bpp, MS-SSIM, PSNR) on a set of images.",
    )
    parser.add_argument("images", metavar="IMAGES",
                        help="a folder of images, a quoted glob, or 'kodak' ($VAL_ROOT/kodak)")
    parser.add_argument("--codecs", default=",".join(CODECS),
                        help=f"comma-separated subset of {','.join(CODECS)} (default: all)")
    parser.add_argument("--out", help="output root (default: $OTHER_CODECS_ROOT, else "
                                      f"./{DEFAULT_RESULTS_ROOT})")
    parser.add_argument("--qualities", nargs="+", metavar="[CODEC=]V,V",
                        help="settings instead of the default grids: quality for jpeg, webp "
                             "and avif (webp also fractional, e.g. 75.5), compression ratio "
                             "for jp2k; without CODEC= for all")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="encoding processes (default: number of CPUs)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODECS]
    if unknown or not codecs:
        print(f"error: unknown codec(s) {', '.join(unknown) or '(none given)'}; "
              f"valid: {', '.join(CODECS)}", file=sys.stderr)
        return 1
    try:
        settings = _parse_qualities(args.qualities or [], codecs)
        dataset, paths = resolve_images(args.images)
    except ValueError as exc:  # bad --qualities, or a DatasetError: no images
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in codecs:
        if not CODECS[name].available():
            print(f"{name}: this Pillow ({PIL.__version__}) was built without "
                  f"{CODECS[name].feature} support; skipping it", file=sys.stderr)
            del settings[name]
    if not settings:
        print("error: none of the chosen codecs is available", file=sys.stderr)
        return 1

    results = evaluate(paths, settings, workers=max(1, args.workers))
    if not any(results[name][value] for name in results for value in results[name]):
        print(f"error: none of the {len(paths)} images could be read", file=sys.stderr)
        return 1
    for name, by_value in results.items():
        folder = results_root(args.out) / dataset / name
        for value, measures in by_value.items():
            write_measures_csv(folder / CODECS[name].folder(value) / MEASURES_CSV, measures)
        _print_table(CODECS[name], by_value, folder)
    return 0
