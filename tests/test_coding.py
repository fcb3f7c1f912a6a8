"""Entropy coding: exactness of the integer context model, round trips, files, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcomp import api, cli
from imgcomp.api import load_model
from imgcomp.checkpoints.log_dirs import load_codec
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import BitstreamError
from imgcomp.entropy_coding.integer_layers import ACT_FRAC_BITS
from imgcomp.entropy_coding.integer_model import IntegerContextModel, probabilities
from imgcomp.entropy_coding.range_coding import decode_symbols, encode_symbols
from imgcomp.entropy_coding.wavefront import Extent, wavefront_time
from imgcomp.nets.autoencoder import pad_to_multiple
from imgcomp.nets.probclass import ProbClassifier

ROOT = Path(__file__).resolve().parents[1]


def _context_model(k=12, seed=0, kernel_size=3, num_res_blocks=1, std=0.2):
    torch.manual_seed(seed)
    pc = ProbClassifier(6, kernel_size, k, num_res_blocks=num_res_blocks)
    for p in pc.parameters():
        torch.nn.init.normal_(p, std=std)
    centers = torch.tensor([-1.9, -1.0, -0.2, 0.3, 1.1, 2.0])
    return pc, centers, IntegerContextModel(pc, centers, float(centers[0]))


def _float_logits(pc, centers, symbols):
    """The float model's logits (C*H*W, L) of a (C, H, W) volume, in (c, h, w) order."""
    with torch.no_grad():
        logits = pc(centers[symbols][None], float(centers[0]))[0]
    return logits.reshape(logits.shape[0], -1).T.double()


def _forward(model, image):
    """The eval-mode forward pass on an image: (uint8 reconstruction, bits)."""
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        out = model(pad_to_multiple(x).contiguous(memory_format=torch.channels_last))
    x_hat = model.to_uint8(out.x_hat[0, :, :h, :w]).permute(1, 2, 0).numpy()
    return x_hat, float(out.bitcost.double().sum())


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 90 * np.sin(xx / 7 + seed), 60 + yy, (xx * 2 + yy) % 230], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def job(trained_log_dir):
    """The tiny trained model's log dir; encoding and decoding only read it."""
    return trained_log_dir


@pytest.fixture(scope="module")
def codec(job):
    return load_model(job)


def test_integer_model_matches_float_model():
    pc, centers, model = _context_model()
    symbols = torch.randint(0, 6, (5, 7, 9), generator=torch.Generator().manual_seed(1))
    logits = model.logits(symbols) / 2**ACT_FRAC_BITS
    ref = _float_logits(pc, centers, symbols)[model.coding_order((5, 7, 9))]
    assert (logits - ref).abs().max() < 5e-3
    assert not torch.equal(logits, torch.zeros_like(logits))


def test_deeper_wider_context_model_round_trip():
    """The integer model follows the classifier's own layer description: two residual
    blocks of k = 64 (6 layers, context 7 x 13 x 13), with weights large enough for sharp,
    varied probabilities."""
    pc, centers, model = _context_model(k=64, num_res_blocks=2, std=0.06)
    assert [layer.name for layer in pc.layers] == [
        "conv_in", "res_conv1", "res_conv2", "res2_conv1", "res2_conv2", "conv_out"]
    assert [layer.skip_from for layer in pc.layers] == [None, None, 0, None, 2, None]
    shape = (4, 9, 11)
    symbols = torch.randint(0, 6, shape, generator=torch.Generator().manual_seed(5))
    logits = model.logits(symbols) / 2**ACT_FRAC_BITS
    ref = _float_logits(pc, centers, symbols)[model.coding_order(shape)]
    assert (logits - ref).abs().max() < 5e-3
    probs = torch.softmax(ref, dim=1)
    assert probs.max() > 0.9 and probs.max(dim=1).values.min() < 0.5  # sharp, not constant
    words, bits = encode_symbols(model, symbols)
    assert torch.equal(decode_symbols(model, words, shape), symbols)
    assert 32 * words.size <= bits + 64 + 0.01 * bits


@pytest.mark.parametrize("shape, reach", [((5, 7, 9), 1), ((3, 4, 11), 2), ((1, 1, 1), 1)])
def test_wavefront_slabs_give_the_coding_order(shape, reach):
    """Positions made some steps at a time, row by row, and concatenated are the positions
    sorted by wavefront time, then flat index (the coding order)."""
    extent = Extent(-2, -1, -3, *shape)
    d, h, w = np.meshgrid(np.arange(shape[0]) - 2, np.arange(shape[1]) - 1,
                          np.arange(shape[2]) - 3, indexing="ij")
    times = wavefront_time(d.ravel(), h.ravel(), w.ravel(), reach)
    expected = np.argsort(times, kind="stable")
    first, end = int(times.min()), int(times.max()) + 1
    for slab in (1, 3, 16, end - first):
        parts = [extent.wavefront(t0, min(t0 + slab, end), reach)
                 for t0 in range(first, end, slab)]
        assert np.array_equal(np.concatenate([flat for flat, _ in parts]), expected)
        assert np.array_equal(np.concatenate([t for _, t in parts]), times[expected])


def test_integer_model_refuses_what_it_cannot_code_exactly():
    with pytest.raises(ValueError, match="too wide for exact"):
        IntegerContextModel(ProbClassifier(6, 3, 1024), torch.arange(6.0), 0.0)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 2), (3, 5, 4), (4, 9, 13), (2, 1, 17),
                                   (6, 12, 1), (5, 420, 3)])
def test_symbol_round_trip(shape):
    """Encoded in one pass and along the wavefront (as large volumes are): the same file."""
    _, _, model = _context_model()
    symbols = torch.randint(0, 6, shape, generator=torch.Generator().manual_seed(sum(shape)))
    words, bits = encode_symbols(model, symbols)
    walked, walked_bits = encode_symbols(model, symbols.to(torch.uint8), one_pass_bytes=0)
    assert np.array_equal(walked, words) and walked_bits == pytest.approx(bits, rel=1e-12)
    assert torch.equal(decode_symbols(model, words, shape), symbols)
    # The range coder's output is within a word or two of the cross-entropy.
    assert 32 * words.size <= bits + 64 + 0.01 * bits


@pytest.mark.parametrize("std", [0.2, 0.5])
@pytest.mark.parametrize("pick", [np.argmax, np.argmin], ids=["likeliest", "unlikeliest"])
def test_payload_budget_admits_extreme_volumes(std, pick):
    """Decoding refuses symbols that carry more information than the payload holds; volumes
    of the likeliest symbols (~0 bits each) or the unlikeliest (probabilities down to 1e-10,
    which the range coder floors at 2^-24) still decode."""
    _, _, model = _context_model(std=std)
    shape = (4, 9, 13)

    def step(logits):
        probs = probabilities(logits)
        return pick(probs, axis=1)

    symbols = model.decode(shape, step)
    words, _ = encode_symbols(model, symbols)
    assert torch.equal(decode_symbols(model, words, shape), symbols)
    with pytest.raises(BitstreamError, match="payload exhausted"):
        decode_symbols(model, words[:len(words) // 2], shape)


def test_round_trip_with_5x5_kernels():
    """A wider context (kernel_size = 5) needs a slower wavefront; it must still decode."""
    _, _, model = _context_model(k=6, kernel_size=5)
    symbols = torch.randint(0, 6, (3, 7, 8), generator=torch.Generator().manual_seed(4))
    words, _ = encode_symbols(model, symbols)
    assert torch.equal(decode_symbols(model, words, (3, 7, 8)), symbols)


def test_decoder_sees_exactly_the_encoders_logits():
    """Decoding recomputes the logits step by step with other shapes; they must be identical."""
    _, _, model = _context_model()
    symbols = torch.randint(0, 6, (4, 6, 8), generator=torch.Generator().manual_seed(2))
    encoder_logits = model.logits(symbols)
    order = model.coding_order((4, 6, 8))
    seen = []

    def step(logits):
        seen.append(logits.clone())
        n = sum(len(s) for s in seen)
        return symbols.reshape(-1)[order[n - len(logits):n]]

    model.decode((4, 6, 8), step)
    assert torch.equal(torch.cat(seen), encoder_logits)
    assert len(seen) > 10  # many wavefront steps, each with several symbols


def test_exact_across_chunk_sizes_and_thread_counts():
    _, _, model = _context_model()
    symbols = torch.randint(0, 6, (3, 8, 10), generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = model.logits(symbols, chunk=37)
        words_1 = encode_symbols(model, symbols)[0]
        torch.set_num_threads(2)
        two_threads = model.logits(symbols, chunk=100000)
        decoded = decode_symbols(model, words_1, (3, 8, 10))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, two_threads)
    assert torch.equal(decoded, symbols)


@pytest.mark.parametrize("size", [(40, 48), (37, 53), (8, 8), (61, 17)])
def test_image_round_trip_equals_val_reconstruction(codec, size):
    """Decoding a file gives what val.py measures, and that is the eval-mode forward pass:
    the decoded dequantized symbols (within a level: decoding sums its convolutions in an
    order of its own, row_bands), costed by the same probability classifier."""
    image = _photo(*size, seed=size[0])
    data = codec.compress(image)
    decoded = codec.decompress(data)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    symbols = codec.symbols(image)
    expected, bits = _forward(codec, image)
    assert np.array_equal(codec.reconstruct(symbols, *size), decoded)
    assert np.abs(decoded.astype(int) - expected).max() <= 1
    assert codec.bits(symbols) == bits


def test_kodak_crops_round_trip(codec):
    """Real photographs (Kodak crops) where the shared data is available."""
    import os

    kodak = Path(os.environ.get("IMGCOMP_SHARED", ROOT.parent / "shared")) / "data/kodak"
    if not (kodak / "kodim23.png").is_file():
        pytest.skip("Kodak images not available (set IMGCOMP_SHARED)")
    full = np.asarray(Image.open(kodak / "kodim23.png").convert("RGB"))
    for h, w in ((96, 128), (75, 101)):
        crop = full[200:200 + h, 300:300 + w]
        decoded = codec.decompress(codec.compress(crop))
        assert np.abs(decoded.astype(int) - _forward(codec, crop)[0]).max() <= 1


def test_grayscale_input(codec, tmp_path):
    gray = _photo(24, 32)[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    decoded = codec.decompress(codec.compress(tmp_path / "gray.png"))
    assert decoded.shape == (24, 32, 3)
    assert np.array_equal(decoded, codec.decompress(codec.compress(gray)))


def test_real_bits_close_to_estimate(codec):
    image = _photo(128, 128, seed=7)
    symbols = codec.symbols(image)
    data, theory_bits = codec.encode_symbols(symbols, 128, 128)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        float_bits = float(codec(pad_to_multiple(x)).bitcost.double().sum())
    payload_bits = 8 * (len(data) - bitstream.HEADER_BYTES)
    assert theory_bits <= payload_bits <= 1.01 * theory_bits + 64  # coder flushes <= 2 words
    assert theory_bits == pytest.approx(float_bits, rel=0.01)  # integer model costs ~nothing


def test_header_errors(codec, job, tmp_path):
    data = codec.compress(_photo(16, 24))
    with pytest.raises(BitstreamError, match="bad magic"):
        codec.decompress(b"JUNK" + data[4:])
    with pytest.raises(BitstreamError, match="newer than this imgcomp"):
        codec.decompress(data[:4] + bytes([bitstream.FORMAT_VERSION + 1]) + data[5:])
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decompress(data[:-3])
    with pytest.raises(BitstreamError, match="truncated"):
        codec.decompress(data[:10])
    corrupted = bytearray(data)
    corrupted[-1] ^= 0x10
    with pytest.raises(BitstreamError, match="corrupted"):
        codec.decompress(bytes(corrupted))
    other = load_codec(job / "ckpts")
    with torch.no_grad():
        other.probclass.conv_out.bias.add_(0.5)
    with pytest.raises(BitstreamError, match="another model"):
        other.decompress(data)


def test_coder_follows_the_weights(job):
    """The integer coder is cached, and rebuilt as soon as any weight changes (a model
    trained further codes with its new weights, never with stale integers)."""
    model = load_codec(job / "ckpts")
    image = _photo(24, 32, seed=5)
    data = model.compress(image)
    fingerprint, coder = model.coder()
    assert model.coder()[1] is coder and data[5:13] == fingerprint
    weight = model.probclass.conv_in.weight
    trained = weight.detach().clone()
    with torch.no_grad():  # as an optimizer step would
        weight.mul_(1.5)
    new_fingerprint, new_coder = model.coder()
    assert new_fingerprint != fingerprint and new_coder is not coder
    with pytest.raises(BitstreamError, match="another model"):
        model.decompress(data)
    new_data = model.compress(image)
    assert new_data[5:13] == new_fingerprint and new_data != data
    assert np.array_equal(model.decompress(new_data), _forward(model, image)[0])
    with torch.no_grad():  # restored weights: the old files decode again
        weight.copy_(trained)
    assert model.coder()[0] == fingerprint
    assert np.array_equal(model.decompress(data), _forward(model, image)[0])
    # A weight replaced by a new tensor (not changed in place) is seen too.
    model.probclass.conv_in.weight = torch.nn.Parameter(trained * 2)
    assert model.coder()[0] not in (fingerprint, new_fingerprint)
    model.probclass.conv_in.weight = torch.nn.Parameter(trained.clone())
    assert model.coder()[0] == fingerprint
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        model.compress(image)


def test_cli_encode_decode(job, tmp_path, capsys):
    Image.fromarray(_photo(33, 41)).save(tmp_path / "in.png")
    assert cli.main(["encode", "--model", str(job), str(tmp_path / "in.png"), "-o",
                     str(tmp_path / "in.imgc")]) == 0
    assert cli.main(["decode", "--model", str(job), str(tmp_path / "in.imgc"), "-o",
                     str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (41, 33)
    assert "bpp" in capsys.readouterr().out
    (tmp_path / "bad.imgc").write_bytes(b"IMGC\x01garbage")
    assert cli.main(["decode", "--model", str(job), str(tmp_path / "bad.imgc"), "-o",
                     str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "truncated" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_cli_output_paths_as_cwebp(job, tmp_path, monkeypatch, capsys):
    """-o as in cwebp/cjxl-style tools: a folder (existing, or ending in /) receives NAME.imgc
    or NAME.png; several images need a folder; a missing parent folder, an image format
    unknown, a missing input: one line naming the path given, and nothing written."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        Image.fromarray(_photo(16, 24, seed=len(name))).save(f"{name}.png")
    encode = ["encode", "--model", str(job)]
    decode = ["decode", "--model", str(job)]
    Path("existing").mkdir()
    assert cli.main([*encode, "a.png", "-o", "existing"]) == 0
    assert cli.main([*encode, "a.png", "-o", "new/"]) == 0
    assert (tmp_path / "new/a.imgc").read_bytes() == (tmp_path / "existing/a.imgc").read_bytes()
    assert cli.main([*decode, "new/a.imgc", "-o", "existing"]) == 0
    assert cli.main([*decode, "new/a.imgc", "-o", "decoded/"]) == 0
    assert cli.main([*decode, "new/a.imgc", "-o", "no_extension"]) == 0  # PNG, as dwebp
    png = (tmp_path / "existing/a.png").read_bytes()
    assert png[:4] == b"\x89PNG" and (tmp_path / "decoded/a.png").read_bytes() == png
    assert (tmp_path / "no_extension").read_bytes() == png
    capsys.readouterr()

    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli.main([*encode, "a.png", "b.png", "-o", "two.imgc"]) == 1
    assert "-o two.imgc: several images need a folder" in _one_error_line(capsys)
    assert cli.main([*encode, "a.png", "b.png", "-o", "no_extension"]) == 1
    assert "-o no_extension: several images need a folder, and this is a file" in \
        _one_error_line(capsys)
    for command in ([*encode, "a.png", "-o", "missing/a.imgc"],
                    [*decode, "new/a.imgc", "-o", "missing/a.png"]):
        assert cli.main(command) == 1
        assert _one_error_line(capsys) == (f"error: cannot write {command[-1]}: the folder "
                                           "missing does not exist\n")
    assert cli.main([*encode, "a.png", "b.png", "-o", "missing/out/"]) == 1
    assert "cannot make the folder missing/out/: missing does not exist" in \
        _one_error_line(capsys)
    assert cli.main([*decode, "new/a.imgc", "-o", "a.xyz"]) == 1
    assert "cannot write a.xyz: no image format has the extension '.xyz'" in \
        _one_error_line(capsys)
    assert cli.main([*encode, "nothing.png", "-o", "x.imgc"]) == 1
    assert _one_error_line(capsys) == "error: nothing.png: no such file or folder\n"
    assert cli.main([*decode, "nothing.imgc", "-o", "x.png"]) == 1
    assert _one_error_line(capsys) == "error: nothing.imgc: No such file or directory\n"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    assert cli.main([*encode, "a.png", "b.png", "-o", "two.imgc/"]) == 0  # asked for a folder
    assert sorted(p.name for p in (tmp_path / "two.imgc").iterdir()) == ["a.imgc", "b.imgc"]


def test_module_api(job):
    image = _photo(16, 16)
    data = api.compress(image, model=job)
    assert api.decompress(data, model=job).shape == (16, 16, 3)


def test_default_model_is_shipped():
    data = api.compress(_photo(24, 40))
    assert data[:4] == bitstream.MAGIC
    assert api.decompress(data).shape == (24, 40, 3)
