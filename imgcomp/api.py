"""The Python API: load a model by name (low, med, hi), job id, log dir or fingerprint (see
imgcomp.checkpoints.zoo), or compress and decompress with one.

    from imgcomp.api import load_model
    codec = load_model("hi")  # an ImageCodec in eval mode; or load_model("logs/JOB_DIR")
    data = codec.compress("photo.png")
    image = codec.decompress(data)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from imgcomp.base.image_files import ImageLike, read_image
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import ckpt_dir_of, load_codec, read_configs
from imgcomp.checkpoints.zoo import DEFAULT_MODEL, load_model
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config
from imgcomp.entropy_coding import bitstream
from imgcomp.evaluation.refinement import refined_symbols

__all__ = ["DEFAULT_MODEL", "clear_caches", "compress", "decompress", "default_model_dir",
           "load_model"]
DEFAULT_JOB = next(row.job_id for row in zoo.SHIPPED if row.name == DEFAULT_MODEL)


def default_model_dir() -> Path:
    """Log dir of the default shipped model; CheckpointError if it is not there."""
    return zoo.find(DEFAULT_MODEL).log_dir


@functools.lru_cache(maxsize=2)
def _cached_model(log_dir: Path) -> ImageCodec:
    return load_codec(ckpt_dir_of(log_dir))


@functools.lru_cache(maxsize=2)
def _cached_ae_config(log_dir: Path) -> Config:
    return read_configs(ckpt_dir_of(log_dir))[0]


def _lookup_key() -> tuple[str, str]:
    """What a lookup depends on besides its spec: the folders searched ($IMGCOMP_MODELS and
    the user's models folder), and the working directory (a relative log dir, or a relative
    root in $IMGCOMP_MODELS)."""
    return os.pathsep.join(map(str, zoo.models_search_path())), os.getcwd()


# compress/decompress look a model up once per spec or fingerprint (a lookup scans folders).
# Only models found are cached (lru_cache keeps no exceptions): a model added later, or one
# made known by a new $IMGCOMP_MODELS (part of the key), is found by the next call.
@functools.lru_cache(maxsize=16)
def _find(spec: str, models_path: str, cwd: str) -> zoo.KnownModel:
    return zoo.find(spec)


@functools.lru_cache(maxsize=16)
def _find_by_fingerprint(fingerprint: bytes, models_path: str,
                         cwd: str) -> zoo.KnownModel:
    return zoo.find_by_fingerprint(fingerprint)


def clear_caches() -> None:
    """Forget the models `compress` and `decompress` loaded and looked up (e.g. after a log
    dir's checkpoint was replaced)."""
    for cached in (_cached_model, _cached_ae_config, _find, _find_by_fingerprint):
        cached.cache_clear()


def compress(image: ImageLike, model: str | os.PathLike | None = None, refine: int = 0
             ) -> bytes:
    """Compress an image with a model (see load_model; default: the shipped DEFAULT_MODEL),
    with `refine` steps of encode-time refinement (imgcomp.evaluation.refinement: a better
    image at about the same size, read by the unchanged decoder; 0.7-0.9 s per step for a
    768x512 image on 2 CPU cores)."""
    known = _find(os.fspath(model or DEFAULT_MODEL), *_lookup_key())
    codec = _cached_model(known.log_dir)
    if not refine:
        return codec.compress(image)
    array = read_image(image, max_pixels=bitstream.pixel_limit())
    symbols = refined_symbols(codec, array, _cached_ae_config(known.log_dir), refine)
    return codec.encode_symbols(symbols, *array.shape[:2])[0]


def decompress(data: bytes, model: str | os.PathLike | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decompress bytes made by `compress`, with the known model whose fingerprint the header
    carries (or `model`); BitstreamError for a file claiming more than
    `bitstream.pixel_limit(max_pixels)` pixels (see ImageCodec.decompress), UnknownModelError
    if no known model has its fingerprint."""
    header, payload = bitstream.unpack(data, max_pixels)  # parsed and checked once
    if model is None:
        known = _find_by_fingerprint(header.fingerprint, *_lookup_key())
    else:
        known = _find(os.fspath(model), *_lookup_key())
    return _cached_model(known.log_dir).decompress_unpacked(header, payload)
