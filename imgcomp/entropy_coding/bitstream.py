"""Compressed image files: a small versioned header plus the range-coded symbols. The model
writes and reads them (`ImageCodec.compress/decompress`); this module owns the format.

File layout (little-endian):
    magic  b"IMGC" | version u8 | model fingerprint 8 bytes | image height u32, width u32 |
    latent C u16, h u16, w u16 | payload length u32 | CRC32 of all preceding bytes and the
    payload u32 | payload (range coder words, u32 each)
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgcomp.nets.shapes import SUBSAMPLING

if TYPE_CHECKING:  # headers are read without torch (`imgcomp info` answers at once)
    from torch import nn

MAGIC = b"IMGC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sB8sIIHHHI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size
MAX_SIDE = 1 << 16  # refuse absurd sizes before allocating anything
# The decompression-bomb guard, in the spirit of Pillow's MAX_IMAGE_PIXELS: a limit that
# ordinary photos never reach and a few bytes claiming a huge image always do. Decoding runs
# the context model along its wavefront and the autoencoder tile by tile, so its memory is the
# image itself (3 bytes a pixel, and C/64 for its symbols) plus a working set bounded by the
# tile: a 48 MP photo (8000 x 6000) decodes in under 1 GB. 256 MP (16000 x 16000) took 2.2 GB,
# most of it the PNG writer's copies of the image, and 10 minutes on two cores: about the most
# a workstation should give a file from anyone; larger images need the limit raised explicitly
# (pixel_limit).
MAX_PIXELS = 1 << 28
MAX_PIXELS_ENV = "IMGCOMP_MAX_PIXELS"


class BitstreamError(ValueError):
    """A compressed file that this model cannot decode (named problem, never garbage)."""


@dataclass(frozen=True)
class Header:
    fingerprint: bytes
    height: int
    width: int
    latent_shape: tuple[int, int, int]
    payload_length: int


def model_fingerprint(model: nn.Module) -> bytes:
    """8 bytes of SHA-256 over the weights (names, dtypes, shapes, values) that coding uses."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.digest()[:8]


def pack(header: Header, payload: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, header.fingerprint, header.height, header.width,
                        *header.latent_shape, len(payload))
    return head + _crc(head, payload) + payload


def _crc(head: bytes, payload: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def reseal(data: bytes) -> bytes:
    """A file with its CRC recomputed over its header fields and payload as they are. Anyone
    can do this, so the CRC guards against accidents, not attackers (tests forge files)."""
    head, payload = data[:_HEADER.size], data[HEADER_BYTES:]
    return head + _crc(head, payload) + payload


def pixel_limit(max_pixels: int | None = None) -> int:
    """The most pixels a file may claim: `max_pixels` if given, else the environment variable
    IMGCOMP_MAX_PIXELS if set, else MAX_PIXELS (read at each call, so it can be changed)."""
    if max_pixels is None:
        value = os.environ.get(MAX_PIXELS_ENV)
        if value is None:
            return MAX_PIXELS
        if not value.strip().isdigit() or int(value) == 0:
            raise ValueError(f"{MAX_PIXELS_ENV}={value!r} is not a positive integer")
        return int(value)
    if max_pixels <= 0:
        raise ValueError(f"the pixel limit must be positive, got {max_pixels}")
    return max_pixels


def unpack(data: bytes, max_pixels: int | None = None) -> tuple[Header, bytes]:
    """Parse and check a file's header and CRC, and refuse images of more than
    pixel_limit(max_pixels) pixels; BitstreamError on any problem."""
    fixed = HEADER_BYTES
    if len(data) < 5 or data[:4] != MAGIC:
        raise BitstreamError("not an imgcomp compressed file (bad magic bytes)")
    if data[4] > FORMAT_VERSION:
        raise BitstreamError(f"format version {data[4]} is newer than this imgcomp supports "
                             f"({FORMAT_VERSION}); upgrade imgcomp")
    if data[4] != FORMAT_VERSION:
        raise BitstreamError(f"format version {data[4]} is not supported (this imgcomp reads "
                             f"version {FORMAT_VERSION})")
    if len(data) < fixed:
        raise BitstreamError(f"file is truncated ({len(data)} bytes, header needs {fixed})")
    _, _, fingerprint, height, width, c, h, w, length = _HEADER.unpack_from(data)
    payload = data[fixed:]
    if len(payload) != length:
        raise BitstreamError(f"file is truncated or has trailing data: payload is "
                             f"{len(payload)} bytes, header says {length}")
    if _crc(data[:_HEADER.size], payload) != data[_HEADER.size:fixed]:
        raise BitstreamError("file is corrupted (CRC mismatch)")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or length % 4 or not length:
        raise BitstreamError(f"invalid header (image {height}x{width}, payload {length} bytes)")
    if (h, w) != (-(-height // SUBSAMPLING), -(-width // SUBSAMPLING)):
        raise BitstreamError(f"invalid header: latent {h}x{w} does not fit image "
                             f"{height}x{width}")
    limit = pixel_limit(max_pixels)
    if height * width > limit:
        raise BitstreamError(f"image {width}x{height} has {height * width} pixels, more than the "
                             f"limit of {limit} against decompression bombs; to decode it, raise "
                             f"the limit: imgcomp decode --max_pixels N, {MAX_PIXELS_ENV}=N, or "
                             f"decompress(data, max_pixels=N)")
    return Header(fingerprint, height, width, (c, h, w), length), payload
