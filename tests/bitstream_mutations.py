"""Hostile compressed files for fuzzing: mutations of real files with their CRC recomputed,
as an attacker would (used by tests/test_bitstream.py and tests/fuzz_bitstream.py).

`mutate(data, rng)` returns (kind, mutated file): payload bit flips, truncation and extension
(length field fixed), image sizes changed consistently (the latent fits the image), latent
channels changed, random header bytes. `decode_outcome` decodes one and names what happened.
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np

from imgcomp.base.image_files import read_image, sample_photos
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import BitstreamError, pack, reseal, unpack
from imgcomp.nets.autoencoder import SUBSAMPLING

CROP = (64, 96)  # height, width: the 96 x 64 crops of the issue


def base_files(model: ImageCodec, count: int = 3) -> list[bytes]:
    """Real files: 96 x 64 crops of the bundled sample photos, compressed by `model`."""
    files = []
    for path in sample_photos()[:count]:
        photo = read_image(path)
        y, x = photo.shape[0] // 3, photo.shape[1] // 3
        files.append(model.compress(photo[y:y + CROP[0], x:x + CROP[1]]))
    return files


def _flip_payload_bits(header, payload, rng):
    flipped = bytearray(payload)
    for _ in range(rng.integers(1, 9)):
        bit = int(rng.integers(0, 8 * len(flipped)))
        flipped[bit // 8] ^= 1 << (bit % 8)
    return pack(header, bytes(flipped))


def _truncate_payload(header, payload, rng):
    words = len(payload) // 4
    return pack(header, payload[:4 * int(rng.integers(0, words))])


def _extend_payload(header, payload, rng):
    extra = int(rng.integers(1, 65)) * 4
    tail = bytes(extra) if rng.random() < 0.5 else rng.bytes(extra)
    return pack(header, payload + tail)


def _resize_image(header, payload, rng):
    height = int(rng.integers(1, 4 * header.height + 1))
    width = int(rng.integers(1, 4 * header.width + 1))
    latent = (header.latent_shape[0], -(-height // SUBSAMPLING), -(-width // SUBSAMPLING))
    return pack(dataclasses.replace(header, height=height, width=width, latent_shape=latent),
                payload)


def _change_channels(header, payload, rng):
    channels = int(rng.choice([0, 1, header.latent_shape[0] - 1, header.latent_shape[0] + 1,
                               rng.integers(0, 1 << 16)]))
    return pack(dataclasses.replace(header, latent_shape=(channels, *header.latent_shape[1:])),
                payload)


def _random_header_bytes(data, rng):
    mutated = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        mutated[rng.integers(0, bitstream.HEADER_BYTES - 4)] = int(rng.integers(0, 256))
    return reseal(bytes(mutated))


_PAYLOAD_MUTATIONS = {"payload bit flips": _flip_payload_bits, "truncation": _truncate_payload,
                      "extension": _extend_payload, "image size": _resize_image,
                      "channels": _change_channels}
KINDS = (*_PAYLOAD_MUTATIONS, "header bytes")
_WEIGHTS = np.array([30, 15, 15, 15, 5, 20]) / 100


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One CRC-valid mutation of a valid file: (its kind, the mutated file)."""
    kind = KINDS[rng.choice(len(KINDS), p=_WEIGHTS)]
    if kind == "header bytes":
        return kind, _random_header_bytes(data, rng)
    header, payload = unpack(data)
    return kind, _PAYLOAD_MUTATIONS[kind](header, payload, rng)


def decode_outcome(model: ImageCodec, data: bytes) -> tuple[str, float]:
    """Decode a file: (outcome, seconds). Outcomes: "image" (of the size its header claims),
    "BitstreamError: <message kind>", "image of another size", or "<exception type>: <message>"
    for any other exception."""
    start = time.perf_counter()
    try:
        image = model.decompress(data)
    except BitstreamError as e:
        outcome = f"BitstreamError: {message_kind(str(e))}"
    except Exception as e:  # what fuzzing looks for
        outcome = f"{type(e).__name__}: {e}"
    else:
        header = unpack(data)[0]
        same = image.shape == (header.height, header.width, 3) and image.dtype == np.uint8
        outcome = "image" if same else "image of another size"
    return outcome, time.perf_counter() - start


def message_kind(message: str) -> str:
    """A BitstreamError message without its particulars: up to the first ':', '(', ',' or
    ';', numbers as N."""
    return re.sub(r"\d+", "N", re.split(r"[:(,;]", message)[0]).strip()
