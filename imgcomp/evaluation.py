"""What every evaluation shares (val.py, other_codecs.py, plotter.py): which images an IMAGES
argument names, the dataset's name, and the measures.csv format and measurements."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcomp.data import DatasetError, resolve_image_paths
from imgcomp.metrics import ms_ssim_uint8, psnr_uint8

MEASURES_HEADER = ("img_name", "bpp", "ms-ssim", "psnr")
# Known dataset names, as the original: `kodak` = $VAL_ROOT/kodak/*.png.
KNOWN_DATASETS = {"kodak": ("kodak", "*.png")}
# `samples`: real photographs that ship inside the scikit-image wheel, so that val.py runs on
# a fresh install with no download.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                 "rocket.jpg")


@dataclass(frozen=True)
class Measure:
    img_name: str
    bpp: float
    ms_ssim: float
    psnr: float


def dataset_name(spec: str) -> str:
    """The last path component before the glob: 'data/kodak/*.png' -> 'kodak',
    'data/kodak' -> 'kodak', 'kodak' -> 'kodak'."""
    parts = Path(os.path.expanduser(spec.rstrip("/\\"))).parts
    for i, part in enumerate(parts):
        if any(ch in part for ch in "*?["):
            parts = parts[:i]
            break
    else:
        if os.path.isfile(spec):
            parts = parts[:-1]
    if not parts or parts[-1] in ("", ".", ".."):
        return Path(os.path.abspath(os.path.join(*parts) if parts else ".")).name or "images"
    return parts[-1]


def resolve_images(spec: str) -> tuple[str, list[Path]]:
    """(dataset name, sorted image paths) of an IMAGES argument: a known name (`kodak`, under
    $VAL_ROOT; `samples`, photos bundled with scikit-image), a folder, or a quoted glob.
    DatasetError if nothing matches."""
    if spec == "samples" and not os.path.exists(spec):
        return spec, sample_photos()
    if spec in KNOWN_DATASETS and not os.path.exists(spec):
        root = os.environ.get("VAL_ROOT")
        if not root:
            raise DatasetError(f"{spec!r} means $VAL_ROOT/{spec}/*.png, but VAL_ROOT is not set")
        folder, pattern = KNOWN_DATASETS[spec]
        return spec, resolve_image_paths(os.path.join(root, folder, pattern))
    return dataset_name(spec), resolve_image_paths(spec)


def sample_photos() -> list[Path]:
    """The bundled sample photographs (see SAMPLE_PHOTOS)."""
    try:
        import skimage
    except ImportError as e:
        raise DatasetError("'samples' are scikit-image's bundled photos: pip install "
                           "scikit-image") from e
    paths = [Path(skimage.data_dir) / name for name in SAMPLE_PHOTOS]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"scikit-image {skimage.__version__} lacks the sample photos "
                           f"{', '.join(missing)} in {skimage.data_dir}")
    return paths


def measure(original: np.ndarray, reconstruction: np.ndarray, num_bits: float) -> tuple[
        float, float, float]:
    """(bpp over the original's pixels, MS-SSIM, PSNR) of an H x W x 3 uint8 reconstruction."""
    h, w = original.shape[:2]
    return (num_bits / (h * w), ms_ssim_uint8(original, reconstruction),
            psnr_uint8(original, reconstruction))


def write_measures_csv(path: str | os.PathLike, measures: Iterable[Measure]) -> None:
    """Write `img_name,bpp,ms-ssim,psnr`, one row per image, in the given order."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MEASURES_HEADER)
        for m in measures:
            writer.writerow([m.img_name, f"{m.bpp:.6f}", f"{m.ms_ssim:.6f}", f"{m.psnr:.4f}"])
    os.replace(tmp, path)


def read_measures_csv(path: str | os.PathLike) -> list[Measure]:
    """Rows of a measures.csv; ValueError naming the file if it is not one."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != MEASURES_HEADER:
        raise ValueError(f"{path}: not a measures.csv (header must be "
                         f"{','.join(MEASURES_HEADER)})")
    try:
        return [Measure(r[0], float(r[1]), float(r[2]), float(r[3])) for r in rows[1:]]
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed row: {e}") from e
