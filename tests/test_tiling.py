"""Tiled coding: halos computed from the layers are the networks' receptive fields, tiled
outputs equal the whole image's, a large decode's memory is bounded by the tile, and decoding
gives the same pixels on any thread count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imgcomp.api import default_model_dir, load_model
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.nets import tiling
from imgcomp.nets.autoencoder import Autoencoder
from imgcomp.nets.probclass import ProbClassifier
from imgcomp.nets.quantizer import Quantizer

ROOT = Path(__file__).resolve().parents[1]


def _positive(network: nn.Module) -> nn.Module:
    """The network in float64 with weights 1 / fan-out, no biases and identity BatchNorms:
    every activation of a positive input is positive (no ReLU cuts a path, no sum cancels),
    so the gradient of an output is nonzero exactly on its receptive field."""
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
    return network.double().eval()


def _reached(grad: torch.Tensor) -> list[tuple[int, int]]:
    """[first, last) rows and columns where a (1, C, H, W) gradient is nonzero."""
    spans = []
    for dims in ((0, 1, 3), (0, 1, 2)):
        hit = torch.nonzero(grad.abs().sum(dims)).ravel()
        spans.append((int(hit.min()), int(hit.max()) + 1))
    return spans


@pytest.mark.parametrize("tf_same", [True, False], ids=["tf_same", "symmetric"])
@pytest.mark.parametrize("groups", [1, 2])
def test_halos_are_the_receptive_fields(tf_same, groups):
    """The spans computed from the layers are exactly the inputs that outputs depend on
    (TF 'SAME' pads 1 before and 2 after a stride-2 5x5 convolution: asymmetric halos)."""
    ae = Autoencoder(4, n=8, num_groups=groups, heatmap=False, tf_same_padding=tf_same)
    encoder, decoder = _positive(ae.encoder), _positive(ae.decoder)
    latent, at = 24, 12
    x = (torch.rand(1, 3, 8 * latent, 8 * latent, dtype=torch.float64) + 1).requires_grad_()
    encoder(x)[:, :, at, at].sum().backward()
    q = (torch.rand(1, 4, latent, latent, dtype=torch.float64) + 1).requires_grad_()
    decoder(q)[:, :, 8 * at:8 * at + 8, 8 * at:8 * at + 8].sum().backward()
    for dim in (0, 1):
        first, last = tiling.input_span(encoder, at, at + 1, dim)
        assert _reached(x.grad)[dim] == (first, last)
        before, after = tiling.encoder_halo(encoder, dim)  # whole latent positions
        assert 8 * (at - before) <= first < 8 * (at - before + 1)
        assert 8 * (at + after) < last <= 8 * (at + after + 1)
        first, last = tiling.input_span(decoder, 8 * at, 8 * at + 8, dim)
        assert _reached(q.grad)[dim] == (first, last)
        assert tiling.decoder_halo(decoder, dim) == (at - first, last - at - 1)


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 90 * np.sin(xx / 7 + seed), 60 + yy * 0.5, (xx * 2 + yy) % 230], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _random_codec(tf_same: bool) -> ImageCodec:
    torch.manual_seed(0)
    return ImageCodec(Autoencoder(8, n=16, num_groups=1, tf_same_padding=tf_same),
                      Quantizer(6), ProbClassifier(6, 3, 8)).eval()


def _check_tiled_equals_whole(codec: ImageCodec, image: np.ndarray, tile: int) -> None:
    h, w = image.shape[:2]
    codec.tile_size = 10**6
    symbols, bits = codec.symbols(image), None
    decoded, bits = codec.reconstruct(symbols, h, w), codec.bits(symbols)
    codec.tile_size = tile
    assert len(codec.tiles(*symbols.shape[1:], "decoder")) > 4
    assert torch.equal(codec.symbols(image), symbols)
    tiled = codec.reconstruct(symbols, h, w)
    assert np.abs(tiled.astype(int) - decoded).max() <= 1
    assert (tiled != decoded).mean() < 1e-3
    assert codec.bits(symbols) == pytest.approx(bits, rel=1e-6)


@pytest.mark.parametrize("tf_same", [True, False], ids=["tf_same", "symmetric"])
@pytest.mark.parametrize("size", [(203, 317), (64, 200)])
def test_tiled_coding_equals_whole_image(tf_same, size):
    """Symbols identical, pixels within one level, bits equal up to float rounding, with
    tiles of 3 latent positions (images that are no multiple of 8 included)."""
    _check_tiled_equals_whole(_random_codec(tf_same), _photo(*size, seed=size[0]), 3)


def test_tiled_coding_equals_whole_image_shipped_model():
    """The default shipped model on a Kodak crop (where the shared data is available)."""
    kodak = Path(os.environ.get("IMGCOMP_SHARED", ROOT.parent / "shared")) / "data/kodak"
    if not (kodak / "kodim23.png").is_file():
        pytest.skip("Kodak images not available (set IMGCOMP_SHARED)")
    photo = np.asarray(Image.open(kodak / "kodim23.png").convert("RGB"))[100:300, 200:437]
    _check_tiled_equals_whole(load_model(default_model_dir()), photo, 10)


_DECODE = """
import hashlib, json, sys
import numpy as np
from imgcomp.api import load_model
from imgcomp.nets import row_bands
codec = load_model(sys.argv[1])
codec.decompress(codec.compress(np.zeros((64, 64, 3), np.uint8)))  # code paged in
tile_size, min_band_work = codec.tile_size, row_bands.MIN_BAND_WORK
def memory(field):  # resident bytes now (VmRSS) or at the peak (VmHWM)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
for file, settings in json.loads(sys.argv[2]):
    data = open(file, "rb").read()
    row_bands.MIN_BAND_WORK = settings.get("min_band_work", min_band_work)
    codec.tile_size = settings.get("tile_size", tile_size)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far (loading the model) becomes the current memory
    before = memory("VmRSS")
    image = codec.decompress(data, max_pixels=1 << 30)
    peak = memory("VmHWM")
    print(json.dumps({"sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                      "growth": peak - before}))
"""


def decode_in_subprocesses(model: Path, runs: list[tuple[int, list[tuple[Path, dict]]]]
                           ) -> list[list[dict]]:
    """Decode files in one subprocess per run, all at once; a run: OMP_NUM_THREADS and its
    decodes (file, settings: tile_size, min_band_work). Each decode's image SHA-256 and the
    growth of the process's peak memory (bytes) from just before it."""
    procs = [subprocess.Popen([sys.executable, "-c", _DECODE, str(model),
                               json.dumps([(str(file), settings) for file, settings in decodes])],
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for threads, decodes in runs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append([json.loads(line) for line in out.splitlines()])
    return results


def test_large_decode_memory_is_bounded_by_the_tile(trained_log_dir, tmp_path):
    """A 2048 x 1536 file of the tiny model, decoded in 32 x 32 latent tiles: peak memory
    grows by the decoded image (9 MB) and ~20 MB more, while decoding it whole grows by the
    activations of the whole image (165 MB)."""
    codec = load_model(trained_log_dir)
    height, width = 1536, 2048
    generator = torch.Generator().manual_seed(0)
    symbols = torch.randint(0, 2, (codec.autoencoder.num_channels, height // 8, width // 8),
                            generator=generator, dtype=torch.uint8)
    file = tmp_path / "large.imgc"
    file.write_bytes(codec.encode_symbols(symbols, height, width)[0])
    [tiled], [whole] = decode_in_subprocesses(
        trained_log_dir, [(1, [(file, {"tile_size": 32})]), (1, [(file, {"tile_size": 10**6})])])
    assert tiled["growth"] < height * width * 3 + 32e6
    assert whole["growth"] > 3 * tiled["growth"]


def test_same_pixels_on_any_thread_count(tmp_path):
    """Files decode to the same pixels with OMP_NUM_THREADS = 1, 2 and 4 (as a user sets it,
    each in its own process): the golden file to the pixels it records, with the default
    tiles and bands and with tiles of 4 latent positions and 8 bands per convolution, and a
    photo whose convolutions are split into bands by default."""
    golden = ROOT / "tests/data/golden_v1.imgc"
    expected = json.loads(golden.with_suffix(".json").read_text())["decoded_sha256"]
    photo = tmp_path / "photo.imgc"
    photo.write_bytes(load_model(default_model_dir()).compress(_photo(120, 168, seed=3)))
    decodes = [(golden, {}), (golden, {"tile_size": 4, "min_band_work": 1}), (photo, {})]
    results = decode_in_subprocesses(default_model_dir(),
                                     [(threads, decodes) for threads in (1, 2, 4)])
    hashes = [[r["sha256"] for r in run] for run in results]
    assert hashes[0] == hashes[1] == hashes[2]
    assert hashes[0][0] == expected
