"""Image files: finding them (a folder, a glob, a known set name), reading any image as
H x W x 3 uint8 RGB, and writing one.

Inference (`imgcomp encode|decode`, val.py, other_codecs.py) needs only this module, not the
training loaders and TFRecord readers of `imgcomp.data.loaders`.
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from imgcomp.base.atomic import atomic_path
from imgcomp.base.user_dirs import data_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
# Known set names: name -> (folder, glob, the `imgcomp data --download` name of the set). As the
# original, `kodak` = $VAL_ROOT/kodak/*.png; without it, the downloaded set in data_dir().
KNOWN_DATASETS = {"kodak": ("kodak", "*.png", "kodak"),
                  "bsds500_val": ("bsds500/val", "*.jpg", "bsds500")}
# `samples`: real photographs that ship inside the scikit-image wheel, so that val.py runs on
# a fresh install with no download.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                 "rocket.jpg")

# A file to decode, encoded bytes, a PIL image or an H x W (x 3) uint8 array.
ImageLike = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


class DatasetError(ValueError):
    """A dataset spec names no usable data."""


class ImageReadError(ValueError):
    """An image file (or encoded image bytes) cannot be decoded."""


def resolve_image_paths(spec: str) -> list[Path]:
    """Sorted image files named by a glob, a single file or a directory.

    Raises DatasetError if nothing matches.
    """
    pattern = os.path.expanduser(spec)
    if os.path.isdir(pattern):
        candidates = glob.glob(os.path.join(glob.escape(pattern), "*"))
        paths = [
            p
            for p in candidates
            if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(p)
        ]
    elif os.path.isfile(pattern):
        # Taken literally: a file name may contain glob characters such as '['.
        paths = [pattern]
    else:
        paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    if not paths:
        if os.path.isdir(pattern):
            raise DatasetError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the "
                               f"folder {spec}")
        if not any(ch in spec for ch in "*?["):  # a name, not a glob: it is not there
            raise DatasetError(f"{spec}: no such file or folder")
        raise DatasetError(f"no image files match the dataset spec {spec!r}")
    return sorted(Path(p) for p in paths)


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
    """(dataset name, sorted image paths) of an IMAGES argument (val.py, other_codecs.py): a
    known name (`kodak`, `bsds500_val`: see known_dataset_paths; `samples`, photos bundled
    with scikit-image), a folder, or a quoted glob. DatasetError if nothing matches."""
    if spec == "samples" and not os.path.exists(spec):
        return spec, sample_photos()
    if spec in KNOWN_DATASETS and not os.path.exists(spec):
        return spec, known_dataset_paths(spec)
    return dataset_name(spec), resolve_image_paths(spec)


def known_dataset_paths(name: str) -> list[Path]:
    """The images of a KNOWN_DATASETS name: in $VAL_ROOT/FOLDER if VAL_ROOT is set and that
    holds any, else in data_dir()/FOLDER (where `imgcomp data --download` puts them).
    DatasetError naming the folders tried if neither does."""
    folder, pattern, download_name = KNOWN_DATASETS[name]
    roots = [r for r in (os.environ.get("VAL_ROOT"), data_dir()) if r]
    for root in roots:
        paths = sorted(p for p in Path(root, folder).glob(pattern) if p.is_file())
        if paths:
            return paths
    tried = " nor ".join(f"{Path(root, folder, pattern)}" for root in roots)
    val_root = "" if os.environ.get("VAL_ROOT") else " ($VAL_ROOT is not set)"
    raise DatasetError(f"{name!r}: no images in {tried}{val_root}; `imgcomp data --download "
                       f"{download_name}` puts them in {Path(data_dir(), folder)}")


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


def read_image(image: ImageLike, name: str | None = None, max_pixels: int | None = None
               ) -> np.ndarray:
    """Any image as an H x W x 3 uint8 RGB array.

    Files and encoded bytes are decoded; grayscale, palette, 16-bit, CMYK, ... become 8-bit
    RGB and alpha is dropped (as TensorFlow's ``decode_image(channels=3)`` does). `name`
    labels bytes in error messages; ImageReadError names the image on any decoding failure.
    A PIL image is converted the same way; anything else must be an H x W x 3 or H x W (gray)
    uint8 array (ValueError otherwise). With `max_pixels`, an image of more pixels raises
    ImageReadError (a file or bytes before their pixels are decoded), and for files and bytes
    it replaces Pillow's own decompression-bomb limit (an error from ~179 MP): the encoder
    reads what the decoder's pixel guard lets through.
    """
    if isinstance(image, Image.Image):
        _check_size(image.width, image.height, max_pixels, name or "<PIL image>")
        return _to_rgb8(image)
    if isinstance(image, bytes | bytearray | memoryview):
        source: io.BytesIO | str | os.PathLike = io.BytesIO(image)
        label = name or "<image bytes>"
    elif isinstance(image, str | os.PathLike):
        source = image
        label = name or os.fspath(image)
    else:
        array = _rgb8_array(np.asarray(image))
        _check_size(array.shape[1], array.shape[0], max_pixels, name or "<array>")
        return array
    try:
        with _pillow_pixel_limit(max_pixels), Image.open(source) as img:
            _check_size(img.width, img.height, max_pixels, label)
            img.load()
            return _to_rgb8(img)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow's plugins raise many exception types on corrupt data
        raise ImageReadError(f"cannot read image {label}: {exc}") from exc


def _check_size(width: int, height: int, max_pixels: int | None, label: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(f"cannot read image {label}: {width}x{height} is over the limit "
                             f"of {max_pixels} pixels")


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """With `max_pixels`, Pillow's own bomb check off for the `with` block (the caller checks
    the size itself); Pillow keeps it as a global, restored afterwards."""
    if max_pixels is None:
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_rgb8(img: Image.Image) -> np.ndarray:
    if img.mode == "I" or img.mode.startswith("I;16"):
        # Pillow's conversion clips these at 255; rescale the 16-bit range instead.
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64) / 257.0), 0, 255)
        return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's warning on palette transparency
    if img.mode == "RGB":  # no converted copy: a 256 MP photo reads in 2.5 GB, not 3.5
        return np.array(img)
    return np.array(img.convert("RGB"))


def _rgb8_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {array.shape} {array.dtype}")
    return array


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format that `path`'s extension names; PNG (lossless, as dwebp writes by
    default) for a name without one. ValueError naming the path for an extension that no
    format Pillow writes has."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "PNG"
    Image.init()  # registers every plugin's extensions
    found = Image.registered_extensions().get(suffix)
    if found not in Image.SAVE:
        raise ValueError(f"cannot write {os.fspath(path)}: no image format has the extension "
                         f"{suffix!r} (lossless: .png, .bmp, .tif, .ppm)")
    return found


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write an H x W x 3 uint8 array in the format `path`'s extension names (image_format:
    .png or none, lossless PNG), atomically."""
    format_name = image_format(path)
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=format_name)
