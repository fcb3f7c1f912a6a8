"""The Python API: load a job's model, or compress and decompress with the shipped default.

    from imgcomp.api import load_model
    codec = load_model("logs/JOB_DIR")  # an ImageCodec in eval mode
    data = codec.compress("photo.png")
    image = codec.decompress(data)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from imgcomp.checkpoint import ckpt_dir_of, find_log_dir, load_codec
from imgcomp.imageio import ImageLike
from imgcomp.model import ImageCodec

# The shipped model used when none is named: a log dir in the repository's ckpts/ (found
# from an editable install or a checkout).
SHIPPED_CKPTS = Path(__file__).resolve().parents[1] / "ckpts"
DEFAULT_JOB = "1126_0305_2"  # gpu@med


def default_model_dir() -> Path:
    """Log dir of the default shipped model; CheckpointError if it is not there."""
    return find_log_dir(SHIPPED_CKPTS, DEFAULT_JOB)


def load_model(log_dir: str | os.PathLike, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """A job's model, from its log dir (or its ckpts/) at checkpoint `step` (-1: latest), in
    eval mode, ready to compress and decompress."""
    return load_codec(ckpt_dir_of(log_dir), step, torch.device(device))


@functools.lru_cache(maxsize=2)
def _cached_model(log_dir: str) -> ImageCodec:
    return load_model(log_dir)


def compress(image: ImageLike, model: str | os.PathLike | None = None) -> bytes:
    """Compress an image with a job's model (default: the shipped default model)."""
    return _cached_model(str(model or default_model_dir())).compress(image)


def decompress(data: bytes, model: str | os.PathLike | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decompress bytes made by `compress` with the same model; BitstreamError for a file
    claiming more than `bitstream.pixel_limit(max_pixels)` pixels (see ImageCodec.decompress)."""
    return _cached_model(str(model or default_model_dir())).decompress(data, max_pixels)
