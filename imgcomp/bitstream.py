"""Compressed image files: a small versioned header plus the range-coded symbols. The model
writes and reads them (`ImageCodec.compress/decompress`); this module owns the format.

File layout (little-endian):
    magic  b"IMGC" | version u8 | model fingerprint 8 bytes | image height u32, width u32 |
    latent C u16, h u16, w u16 | payload length u32 | CRC32 of all preceding bytes and the
    payload u32 | payload (range coder words, u32 each)
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

from torch import nn

from imgcomp.autoencoder import SUBSAMPLING

MAGIC = b"IMGC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sB8sIIHHHI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size
MAX_SIDE = 1 << 16  # refuse absurd sizes before allocating anything


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
    return head + _CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + payload


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and check a file's header and CRC; BitstreamError on any problem."""
    fixed = HEADER_BYTES
    if len(data) < 5 or data[:4] != MAGIC:
        raise BitstreamError("not an imgcomp compressed file (bad magic bytes)")
    if data[4] > FORMAT_VERSION:
        raise BitstreamError(f"format version {data[4]} is newer than this imgcomp supports "
                             f"({FORMAT_VERSION}); upgrade imgcomp")
    if data[4] != FORMAT_VERSION:
        raise BitstreamError(f"unknown format version {data[4]}")
    if len(data) < fixed:
        raise BitstreamError(f"file is truncated ({len(data)} bytes, header needs {fixed})")
    _, _, fingerprint, height, width, c, h, w, length = _HEADER.unpack_from(data)
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    payload = data[fixed:]
    if len(payload) != length:
        raise BitstreamError(f"file is truncated or has trailing data: payload is "
                             f"{len(payload)} bytes, header says {length}")
    if zlib.crc32(payload, zlib.crc32(data[:_HEADER.size])) != crc:
        raise BitstreamError("file is corrupted (CRC mismatch)")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE) or length % 4:
        raise BitstreamError(f"invalid header (image {height}x{width}, payload {length} bytes)")
    if (h, w) != (-(-height // SUBSAMPLING), -(-width // SUBSAMPLING)):
        raise BitstreamError(f"invalid header: latent {h}x{w} does not fit image "
                             f"{height}x{width}")
    return Header(fingerprint, height, width, (c, h, w), length), payload
