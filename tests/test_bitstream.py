"""Compressed files from others: the golden file, format versions, the decompression-bomb
guard, payloads that run out, and CRC-valid fuzzing (the mutations of tests/bitstream_mutations,
shared with tests/fuzz_bitstream.py)."""

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bitstream_mutations import KINDS, base_files, decode_outcome, mutate
from PIL import Image

from imgcomp import api, cli
from imgcomp.api import default_model_dir, load_model
from imgcomp.base.image_files import ImageReadError
from imgcomp.entropy_coding import bitstream, range_coding
from imgcomp.entropy_coding.bitstream import (
    FORMAT_VERSION,
    BitstreamError,
    Header,
    pack,
    reseal,
    unpack,
)

DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / f"golden_v{FORMAT_VERSION}.imgc"


@pytest.fixture(scope="module")
def codec():
    """The default shipped model (decoding only reads it)."""
    return load_model(default_model_dir())


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).hexdigest()


def _bomb(codec, height: int, width: int, payload: bytes) -> bytes:
    """A file with a valid CRC and fingerprint claiming a height x width image."""
    latent = (codec.autoencoder.num_channels, -(-height // 8), -(-width // 8))
    return pack(Header(codec.coder()[0], height, width, latent, len(payload)), payload)


@pytest.mark.parametrize("path", sorted(DATA.glob("golden_v*.imgc")), ids=lambda p: p.name)
def test_golden_files_decode_to_their_pixels(codec, path):
    """Each committed golden file decodes to the symbols and pixels recorded when it was made,
    or, for an old format version that is no longer read, is refused by name. A change of the
    coder's constants or of the format without a new FORMAT_VERSION fails here."""
    data = path.read_bytes()
    expected = json.loads(path.with_suffix(".json").read_text())
    if data[4] != FORMAT_VERSION:
        try:
            header, symbols = codec.decode_symbols(data)
        except BitstreamError as e:
            assert f"format version {data[4]}" in str(e)
            return
    else:
        header, symbols = codec.decode_symbols(data)
    assert _sha256(symbols.numpy()) == expected["symbols_sha256"]
    decoded = codec.reconstruct(symbols, header.height, header.width)
    assert list(decoded.shape) == expected["decoded_shape"]
    assert _sha256(decoded) == expected["decoded_sha256"]


def test_golden_file_of_this_version_is_what_the_encoder_writes(codec):
    assert GOLDEN.is_file(), (f"no golden file for format version {FORMAT_VERSION}: run "
                              "tests/data/make_golden.py (and keep the old ones)")
    assert codec.compress(DATA / "golden.png") == GOLDEN.read_bytes()


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 255])
def test_other_format_versions_are_refused_by_name(codec, version):
    data = GOLDEN.read_bytes()
    with pytest.raises(BitstreamError, match=f"format version {version} "):
        codec.decompress(reseal(data[:4] + bytes([version]) + data[5:]))


@pytest.mark.parametrize("height, width", [(16384, 16385), (65536, 65536), (32768, 8193)])
def test_bombs_are_refused_from_the_header(codec, height, width, monkeypatch):
    """Refused before any decoding (so before allocating anything the size claims)."""
    data = _bomb(codec, height, width, bytes(4))

    def decode_symbols(*args):
        raise AssertionError("a bomb reached the decoder")

    monkeypatch.setattr("imgcomp.codec.image_codec.decode_symbols", decode_symbols)
    with pytest.raises(BitstreamError, match="more than the limit") as error:
        codec.decompress(data)
    message = str(error.value)
    assert "--max_pixels" in message and "IMGCOMP_MAX_PIXELS" in message
    assert "max_pixels=" in message and len(message.splitlines()) == 1


def test_pixel_limit_is_settable(codec, monkeypatch):
    data = GOLDEN.read_bytes()  # 64 x 48 = 3072 pixels
    assert codec.decompress(data, max_pixels=3072).shape == (48, 64, 3)
    with pytest.raises(BitstreamError, match="3072 pixels, more than the limit of 3071"):
        codec.decompress(data, max_pixels=3071)
    with pytest.raises(BitstreamError, match="limit of 3071"):
        api.decompress(data, max_pixels=3071)
    monkeypatch.setenv("IMGCOMP_MAX_PIXELS", "3071")
    with pytest.raises(BitstreamError, match="limit of 3071"):
        codec.decompress(data)
    assert codec.decompress(data, max_pixels=3072).shape == (48, 64, 3)  # the argument wins
    monkeypatch.setenv("IMGCOMP_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="IMGCOMP_MAX_PIXELS='lots' is not a positive"):
        codec.decompress(data)
    monkeypatch.delenv("IMGCOMP_MAX_PIXELS")
    monkeypatch.setattr(bitstream, "MAX_PIXELS", 100)
    with pytest.raises(BitstreamError, match="limit of 100"):
        codec.decompress(data)
    with pytest.raises(ValueError, match="must be positive"):
        codec.decompress(data, max_pixels=0)


def test_cli_pixel_limit(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.png"
    args = ["decode", str(GOLDEN), "-o", str(out)]
    assert cli.main([*args, "--max_pixels", "3071"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {GOLDEN}: image 64x48 has 3072 pixels, more than the limit")
    assert len(err.splitlines()) == 1 and not out.exists()
    monkeypatch.setenv("IMGCOMP_MAX_PIXELS", "3071")
    assert cli.main(args) == 1 and "limit of 3071" in capsys.readouterr().err
    assert cli.main([*args, "--max_pixels", "3072"]) == 0 and out.is_file()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--max_pixels", "0"])
    assert exit_.value.code == 2
    monkeypatch.setenv("IMGCOMP_MAX_PIXELS", "-5")
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2 and "IMGCOMP_MAX_PIXELS" in capsys.readouterr().err


def test_encoder_takes_what_the_decoder_takes(codec, tmp_path, capsys, monkeypatch):
    """The encoder reads images up to the decoder's pixel limit (not Pillow's smaller bomb
    limit) and refuses larger ones, so it never writes a file the decoder would refuse."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone refuses > 2000
    out = tmp_path / "photo.imgc"
    assert cli.main(["encode", str(photo), "-o", str(out)]) == 0
    assert codec.decompress(codec.compress(photo)).shape == (48, 64, 3)
    monkeypatch.setenv("IMGCOMP_MAX_PIXELS", "3071")
    capsys.readouterr()
    out.unlink()
    assert cli.main(["encode", str(photo), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot read image {photo}: 64x48 is over the limit of 3071 pixels\n"
    assert not out.exists()
    with pytest.raises(ImageReadError, match="over the limit of 3071"):
        codec.compress(photo)


@pytest.mark.parametrize("payload", [bytes(4), b"\xff" * 4, bytes.fromhex("12345678"),
                                     bytes(8)], ids=["zeros", "ones", "random", "zeros8"])
def test_payload_that_runs_out_is_refused_early(codec, payload, monkeypatch):
    """A 2048 x 2048 image claimed with a few bytes: the decoder stops once the symbols carry
    more information than the payload holds, having decoded less than 2 % of the claimed
    symbols (counted, not timed: 1.2 % at most for these payloads; 0.1 s on one idle core for
    4 zero bytes, the cheapest garbage)."""
    data = _bomb(codec, 2048, 2048, payload)
    decoded = []
    probabilities = range_coding.probabilities

    def counted(logits):
        decoded.append(len(logits))
        return probabilities(logits)

    monkeypatch.setattr(range_coding, "probabilities", counted)
    with pytest.raises(BitstreamError, match="payload exhausted"):
        codec.decompress(data)
    claimed = int(np.prod(unpack(data)[0].latent_shape))
    assert 0 < sum(decoded) < claimed / 50, (sum(decoded), claimed)


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (3, 100), (64, 64)])
def test_legit_files_with_almost_free_symbols_decode(codec, size):
    """Flat images cost almost nothing per symbol, noise a lot: neither may be refused as
    a payload that ran out."""
    rng = np.random.default_rng(size[0])
    for image in (np.full((*size, 3), 0, np.uint8), np.full((*size, 3), 128, np.uint8),
                  np.full((*size, 3), 255, np.uint8),
                  rng.integers(0, 256, (*size, 3), dtype=np.uint8)):
        data = codec.compress(image)
        assert torch.equal(codec.decode_symbols(data)[1], codec.symbols(image))


def test_range_decoder_errors_are_bitstream_errors(codec):
    """constriction raises AssertionError on some invalid data (here: bit 175 of the golden
    payload flipped)."""
    header, payload = unpack(GOLDEN.read_bytes())
    flipped = bytearray(payload)
    flipped[175 // 8] ^= 1 << (175 % 8)
    with pytest.raises(BitstreamError, match="payload corrupted") as error:
        codec.decompress(pack(header, bytes(flipped)))
    assert isinstance(error.value.__cause__, AssertionError)


def test_out_of_memory_is_a_bitstream_error(codec, monkeypatch):
    data = GOLDEN.read_bytes()
    for error in (MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")):
        def fail(*args, error=error):
            raise error
        monkeypatch.setattr("imgcomp.codec.image_codec.decode_symbols", fail)
        with pytest.raises(BitstreamError, match="out of memory decoding a 64x48 image"):
            codec.decompress(data)
    monkeypatch.setattr("imgcomp.codec.image_codec.decode_symbols", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are not disguised
        codec.decompress(data)


def test_fuzzed_files_fail_cleanly_and_fast(codec):
    """CRC-valid mutations (tests/fuzz_bitstream.py runs 10,000): every outcome is an image
    of the size the header claims or a BitstreamError, none hanging (each well under 1 s on an
    idle machine; the 60 s bound only catches a hang: speed is bench/'s)."""
    files = base_files(codec)
    outcomes = collections.Counter()
    kinds = set()
    for i in range(200):
        kind, data = mutate(files[i % len(files)], np.random.default_rng([1, i]))
        outcome, seconds = decode_outcome(codec, data)
        assert outcome == "image" or outcome.startswith("BitstreamError"), (i, kind, outcome)
        assert seconds < 60, (i, kind, outcome, seconds)
        outcomes[outcome] += 1
        kinds.add(kind)
    assert kinds == set(KINDS)
    assert outcomes["image"] > 10 and len(outcomes) >= 6, outcomes
    assert outcomes["BitstreamError: payload exhausted"] > 10, outcomes
