"""Compressed image files: a small versioned header plus the range-coded symbols, and the
Python API `compress(image) -> bytes` / `decompress(bytes) -> image`.

File layout (little-endian):
    magic  b"IMGC" | version u8 | model fingerprint 8 bytes | image height u32, width u32 |
    latent C u16, h u16, w u16 | payload length u32 | CRC32 of all preceding bytes and the
    payload u32 | payload (range coder words, u32 each)
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgcomp import checkpoint as ckpt
from imgcomp.autoencoder import SUBSAMPLING, pad_to_multiple
from imgcomp.coding import IntegerContextModel, decode_symbols, encode_symbols
from imgcomp.data import load_image_rgb
from imgcomp.model import ImageCodec

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


def model_fingerprint(model: ImageCodec) -> bytes:
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


def _to_uint8_rgb(image) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        return load_image_rgb(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {array.shape} {array.dtype}")
    return array


class ImageCompressor:
    """A trained model ready to compress images to bytes and back."""

    def __init__(self, model: ImageCodec, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.context = IntegerContextModel(model.probclass, model.quantizer.centers,
                                           model.pad_value())
        self.fingerprint = model_fingerprint(model)

    @classmethod
    def from_log_dir(cls, log_dir: str | os.PathLike, step: int = -1,
                     device: torch.device | str = "cpu") -> ImageCompressor:
        """Load a job's log dir (or its ckpts/) at checkpoint `step` (-1: latest)."""
        ckpt_dir = ckpt.ckpt_dir_of(Path(log_dir))
        return cls(ckpt.load_codec(ckpt_dir, step, torch.device(device)), device)

    @torch.no_grad()
    def symbols(self, image: np.ndarray) -> torch.Tensor:
        """(C, h, w) symbols of an H x W x 3 uint8 image (edge-padded to a multiple of 8)."""
        x = torch.from_numpy(np.array(image)).to(self.device)
        x = pad_to_multiple(x.permute(2, 0, 1).unsqueeze(0).float())
        z, _ = self.model.autoencoder.encode(x.contiguous(memory_format=torch.channels_last))
        return self.model.quantizer.symbols(z)[0].cpu()

    @torch.no_grad()
    def reconstruct(self, symbols: torch.Tensor, height: int, width: int) -> np.ndarray:
        q = self.model.quantizer.dequantize(symbols.to(self.device)).unsqueeze(0)
        x_hat = self.model.autoencoder.decode(q.contiguous(memory_format=torch.channels_last))
        x_hat = self.model.to_uint8(x_hat[0, :, :height, :width])
        return x_hat.permute(1, 2, 0).cpu().numpy()

    def encode_symbols(self, symbols: torch.Tensor, height: int, width: int
                       ) -> tuple[bytes, float]:
        """(file bytes, cross-entropy bits of the symbols under the coding probabilities)."""
        words, bits = encode_symbols(self.context, symbols)
        header = Header(self.fingerprint, height, width, tuple(symbols.shape), words.nbytes)
        return pack(header, words.astype("<u4").tobytes()), bits

    def decode_symbols(self, data: bytes) -> tuple[Header, torch.Tensor]:
        header, payload = unpack(data)
        if header.fingerprint != self.fingerprint:
            raise BitstreamError(f"file was compressed with another model (fingerprint "
                                 f"{header.fingerprint.hex()}, this model is "
                                 f"{self.fingerprint.hex()})")
        num_channels = self.model.autoencoder.num_channels
        if header.latent_shape[0] != num_channels:
            raise BitstreamError(f"invalid header: {header.latent_shape[0]} channels, model "
                                 f"has {num_channels}")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        try:
            symbols = decode_symbols(self.context, words, header.latent_shape)
        except (ValueError, RuntimeError) as e:  # constriction on undecodable data
            raise BitstreamError(f"file is corrupted: {e}") from e
        return header, symbols

    def compress(self, image) -> bytes:
        """Image (path, PIL image, or H x W x 3 uint8 array) -> compressed bytes."""
        array = _to_uint8_rgb(image)
        return self.encode_symbols(self.symbols(array), *array.shape[:2])[0]

    def decompress(self, data: bytes) -> np.ndarray:
        """Compressed bytes -> H x W x 3 uint8 image; BitstreamError if undecodable."""
        header, symbols = self.decode_symbols(data)
        return self.reconstruct(symbols, header.height, header.width)


# The shipped model used when none is named: a log dir in the repository's ckpts/ (found
# from an editable install or a checkout).
SHIPPED_CKPTS = Path(__file__).resolve().parents[1] / "ckpts"
DEFAULT_JOB = "1126_0305_2"  # gpu@med


def default_model_dir() -> Path:
    """Log dir of the default shipped model; CheckpointError if it is not there."""
    return ckpt.find_log_dir(SHIPPED_CKPTS, DEFAULT_JOB)


@functools.lru_cache(maxsize=2)
def _compressor(model: str) -> ImageCompressor:
    return ImageCompressor.from_log_dir(model)


def compress(image, model: str | os.PathLike | None = None) -> bytes:
    """Compress an image with a job's model (default: the shipped default model)."""
    return _compressor(str(model or default_model_dir())).compress(image)


def decompress(data: bytes, model: str | os.PathLike | None = None) -> np.ndarray:
    """Decompress bytes made by `compress` with the same model."""
    return _compressor(str(model or default_model_dir())).decompress(data)
