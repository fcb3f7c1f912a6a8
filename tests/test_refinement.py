"""Encode-time refinement (imgcomp.evaluation.refinement) and rate control
(imgcomp.evaluation.rate_control): refined files lower the model's objective and decode with
the unchanged decoder; rate control meets a budget or a quality floor by encoding, or says in
one line that no setting does."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcomp import api, cli
from imgcomp.base.image_files import read_image, sample_photos
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import ckpt_dir_of, load_codec, read_configs
from imgcomp.entropy_coding import bitstream
from imgcomp.evaluation import rate_control, refinement, validation
from imgcomp.evaluation.rate_control import Candidate, RateControlError
from imgcomp.evaluation.refinement import distortion, refine
from imgcomp.evaluation.results import results_dir
from imgcomp.nets.autoencoder import pad_to_multiple
from imgcomp.train.losses import compute_loss

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL = (Path(os.environ.get("IMGCOMP_SHARED", ROOT.parent / "shared"))
            / "fixtures/original_tf1/0101_0001 cvpr@med cvpr@res_shallow")


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(xx / 7 + seed), 90 + yy, (xx * 3 + yy) % 220], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def _objective(model, ae_cfg, image: np.ndarray, symbols: torch.Tensor, target: float) -> float:
    """J of symbols, computed apart from refinement: the reconstruction the decoder makes of
    them and the bits ImageCodec.bits counts."""
    h, w = image.shape[:2]
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    with torch.no_grad():
        x_hat = model.autoencoder.decode(model.quantizer.dequantize(symbols.long()).unsqueeze(0))
        dist = float(distortion(x_hat[..., :h, :w], x, ae_cfg))
    bits_per_symbol = model.bits(symbols) / symbols.numel()
    return dist + ae_cfg.beta * max(bits_per_symbol - target, 0.0)


def test_refined_file_lowers_the_objective_and_decodes_unchanged(trained_log_dir):
    model = load_codec(ckpt_dir_of(trained_log_dir))
    ae_cfg, pc_cfg = read_configs(ckpt_dir_of(trained_log_dir))
    image = _photo(40, 56)
    h, w = image.shape[:2]
    refined = refine(model, image, ae_cfg, steps=8)
    plain_symbols = model.symbols(image)
    target = model.bits(plain_symbols) / plain_symbols.numel()
    assert refined.plain.bits_per_symbol == pytest.approx(target, rel=1e-5)
    assert _objective(model, ae_cfg, image, plain_symbols, target) == pytest.approx(
        refined.plain.total, rel=1e-4)
    assert _objective(model, ae_cfg, image, refined.symbols, target) == pytest.approx(
        refined.refined.total, rel=1e-4)
    assert refined.refined.total < refined.plain.total
    assert not torch.equal(refined.symbols.long(), plain_symbols.long())

    data, _ = model.encode_symbols(refined.symbols, h, w)
    plain_data = model.compress(image)
    assert bitstream.unpack(data)[0].fingerprint == bitstream.unpack(plain_data)[0].fingerprint
    decoder = load_codec(ckpt_dir_of(trained_log_dir))  # a fresh, unchanged decoder
    decoded = decoder.decompress(data)
    assert np.array_equal(decoded, model.reconstruct(refined.symbols, h, w))
    assert not np.array_equal(decoded, decoder.decompress(plain_data))

    # Refinement's distortion is the training loss's.
    x = pad_to_multiple(torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float())
    with torch.no_grad():
        out = model(x)
    assert float(distortion(out.x_hat, x, ae_cfg)) == pytest.approx(
        float(compute_loss(model, out, x, ae_cfg, pc_cfg).distortion), rel=1e-6)


def test_refine_zero_steps_is_the_plain_encoding(trained_log_dir):
    model = load_codec(ckpt_dir_of(trained_log_dir))
    ae_cfg = read_configs(ckpt_dir_of(trained_log_dir))[0]
    image = _photo(24, 32, seed=1)
    refined = refine(model, image, ae_cfg, steps=0)
    assert torch.equal(refined.symbols.long(), model.symbols(image).long())
    assert refined.refined == refined.plain
    with pytest.raises(ValueError, match=">= 0"):
        refine(model, image, ae_cfg, steps=-1)


def test_api_cli_and_val_refine(trained_copy, tmp_path, capsys, monkeypatch):
    log_dir = trained_copy
    Image.fromarray(_photo(32, 40, seed=2)).save(tmp_path / "in.png")
    data = api.compress(tmp_path / "in.png", model=log_dir, refine=3)
    assert api.decompress(data, model=log_dir).shape == (32, 40, 3)
    assert data != api.compress(tmp_path / "in.png", model=log_dir)

    assert cli.main(["encode", "-m", str(log_dir), str(tmp_path / "in.png"), "-o",
                     str(tmp_path / "in.imgc"), "--refine", "3"]) == 0
    assert "refined (3 steps)" in capsys.readouterr().out
    assert (tmp_path / "in.imgc").read_bytes() == data  # deterministic
    assert cli.main(["decode", "-m", str(log_dir), str(tmp_path / "in.imgc"), "-o",
                     str(tmp_path / "out.png")]) == 0
    monkeypatch.setattr(refinement, "MAX_PIXELS", 1000)  # a larger image is refused
    assert cli.main(["encode", "-m", str(log_dir), str(tmp_path / "in.png"), "-o",
                     str(tmp_path / "big.imgc"), "--refine", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'in.png'}: refinement holds the whole image")
    assert len(err.splitlines()) == 1 and not (tmp_path / "big.imgc").exists()
    monkeypatch.undo()

    root, job_id = log_dir.parent, log_dir.name.split(" ")[0]
    images = tmp_path / "set"
    images.mkdir()
    Image.fromarray(_photo(24, 32, seed=3)).save(images / "a.png")
    assert validation.main([str(root), job_id, str(images), "--refine", "2", "--real_bpp",
                            "-s", "-1", "--device", "cpu"]) == 0
    out = results_dir(root, job_id, "set", refine=2)
    assert out.name == f"{job_id} set_refine2"
    assert {"measures.csv", "real_bpp.csv", "validated.json"} <= {p.name for p in out.iterdir()}
    assert not results_dir(root, job_id, "set").exists()  # the plain results are apart


@pytest.mark.skipif(not ORIGINAL.is_dir(), reason="original_tf1 fixture not available "
                    "(set IMGCOMP_SHARED)")
def test_refinement_works_on_a_log_dir_of_the_original():
    model = load_codec(ORIGINAL / "ckpts")
    ae_cfg = read_configs(ORIGINAL / "ckpts")[0]
    image = _photo(32, 32, seed=4)
    refined = refine(model, image, ae_cfg, steps=2)
    assert refined.refined.total <= refined.plain.total
    data, _ = model.encode_symbols(refined.symbols, 32, 32)
    assert np.array_equal(load_codec(ORIGINAL / "ckpts").decompress(data),
                          model.reconstruct(refined.symbols, 32, 32))


@pytest.fixture(scope="module")
def shipped() -> list[Candidate]:
    models = sorted(zoo.shipped_models(), key=lambda m: m.shipped.kodak_bpp)
    if len(models) < 3:
        pytest.skip("the shipped models are not installed")
    return [Candidate(m.name, zoo.load_model(m), read_configs(ckpt_dir_of(m.log_dir))[0])
            for m in models]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A crop of a real photograph: the shipped models' rates increase on it as on Kodak."""
    return read_image(sample_photos()[1])[:96, :128]


def test_bpp_budget_is_never_exceeded_and_met_as_closely_as_the_models_allow(shipped, photo):
    plain = [rate_control.encode_with(c, photo) for c in shipped]
    rates = [e.bpp for e in plain]
    assert rates == sorted(rates)
    for budget in (rates[0], (rates[0] + rates[1]) / 2, (rates[1] + rates[2]) / 2, 2 * rates[2]):
        chosen = rate_control.encode_within_bpp(photo, shipped, budget)
        assert chosen.bpp == max(r for r in rates if r <= budget)  # the closest below
        assert chosen.data == plain[rates.index(chosen.bpp)].data
    with pytest.raises(RateControlError, match=rf"even the lowest setting \(low\) needs "
                       rf"{rates[0]:.4f} bpp, over the budget of 0.1 bpp"):
        rate_control.encode_within_bpp(photo, shipped, 0.1)


def test_ms_ssim_floor_is_met_with_the_fewest_bits(shipped, photo):
    plain = [rate_control.encode_with(c, photo, quality=True) for c in shipped]
    scores = [e.ms_ssim for e in plain]
    assert scores == sorted(scores)
    chosen = rate_control.encode_for_ms_ssim(photo, shipped, (scores[0] + scores[1]) / 2)
    assert (chosen.setting, chosen.data) == ("med", plain[1].data)
    assert rate_control.encode_for_ms_ssim(photo, shipped, scores[0]).setting == "low"
    with pytest.raises(RateControlError, match=r"even the highest setting \(hi\) reaches only"):
        rate_control.encode_for_ms_ssim(photo, shipped, 0.99999)


def test_rate_control_with_refinement(shipped, photo):
    refined = [rate_control.encode_with(c, photo, refine_steps=2) for c in shipped[:2]]
    budget = (refined[0].bpp + refined[1].bpp) / 2
    chosen = rate_control.encode_within_bpp(photo, shipped, budget, refine_steps=2)
    assert (chosen.setting, chosen.data) == ("low refined (2 steps)", refined[0].data)


def test_cli_budget_and_floor(shipped, photo, tmp_path, capsys):
    Image.fromarray(photo).save(tmp_path / "in.png")
    rates = [rate_control.encode_with(c, photo).bpp for c in shipped]
    budget = (rates[1] + rates[2]) / 2
    assert cli.main(["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "a.imgc"),
                     "--bpp", str(budget)]) == 0
    assert f"(budget {budget:g}), med" in capsys.readouterr().out
    assert 8 * (tmp_path / "a.imgc").stat().st_size / photo[..., 0].size == rates[1]
    assert cli.main(["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "b.imgc"),
                     "--ms_ssim", "0.5"]) == 0
    assert ", low" in capsys.readouterr().out
    # -m: that model alone
    assert cli.main(["encode", "-m", "hi", str(tmp_path / "in.png"), "-o",
                     str(tmp_path / "c.imgc"), "--bpp", str(budget)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'in.png'}: even the lowest setting (hi) needs "
                   f"{rates[2]:.4f} bpp, over the budget of {budget:g} bpp\n")
    assert not (tmp_path / "c.imgc").exists()
    with pytest.raises(SystemExit):  # argparse: a budget and a floor at once
        cli.main(["encode", str(tmp_path / "in.png"), "-o", str(tmp_path / "d.imgc"),
                  "--bpp", "1", "--ms_ssim", "0.9"])
