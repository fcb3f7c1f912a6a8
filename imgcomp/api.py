"""The Python API: load a model by name (low, med, hi), job id, log dir or fingerprint (see
imgcomp.zoo), or compress and decompress with one.

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
import torch

from imgcomp import bitstream, zoo
from imgcomp.checkpoint import ckpt_dir_of, load_codec
from imgcomp.imageio import ImageLike
from imgcomp.model import ImageCodec

# The shipped model used when none is named.
DEFAULT_MODEL = "med"
DEFAULT_JOB = next(row.job_id for row in zoo.SHIPPED if row.name == DEFAULT_MODEL)


def default_model_dir() -> Path:
    """Log dir of the default shipped model; CheckpointError if it is not there."""
    return zoo.find(DEFAULT_MODEL).log_dir


def load_model(model: str | os.PathLike = DEFAULT_MODEL, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """A model (a shipped name, a log dir or its ckpts/, or a known job id or fingerprint: see
    imgcomp.zoo.find) at checkpoint `step` (-1: latest), in eval mode, ready to compress and
    decompress."""
    return load_codec(ckpt_dir_of(zoo.find(model).log_dir), step, torch.device(device))


@functools.lru_cache(maxsize=2)
def _cached_model(log_dir: Path) -> ImageCodec:
    return load_model(log_dir)


def compress(image: ImageLike, model: str | os.PathLike | None = None) -> bytes:
    """Compress an image with a model (see load_model; default: the shipped DEFAULT_MODEL)."""
    return _cached_model(zoo.find(model or DEFAULT_MODEL).log_dir).compress(image)


def decompress(data: bytes, model: str | os.PathLike | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decompress bytes made by `compress`, with the known model whose fingerprint the header
    carries (or `model`); BitstreamError for a file claiming more than
    `bitstream.pixel_limit(max_pixels)` pixels (see ImageCodec.decompress), UnknownModelError
    if no known model has its fingerprint."""
    if model is None:
        header, _ = bitstream.unpack(data, max_pixels)
        known = zoo.find_by_fingerprint(header.fingerprint)
    else:
        known = zoo.find(model)
    return _cached_model(known.log_dir).decompress(data, max_pixels)
