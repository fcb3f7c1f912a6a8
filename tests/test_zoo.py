"""The model registry (imgcomp.zoo): shipped names and fingerprints, lookups, and the CLI's
encode/decode/info/models by name and by the header's fingerprint."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgcomp import api, bitstream, cli, zoo
from imgcomp.bitstream import model_fingerprint
from imgcomp.zoo import UnknownModelError


def _write_photo(path, h=24, w=32, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    image = np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("row", zoo.SHIPPED, ids=lambda row: row.name)
def test_shipped_table_matches_weights_and_kodak(row):
    model = zoo.find(row.name)
    assert model.shipped is row and model.job_id == row.job_id
    assert model.log_dir.name == f"{row.job_id} " + row.configs.replace("/", "@").replace(
        " + ", " ")
    assert model_fingerprint(api.load_model(row.name)).hex() == row.fingerprint
    kodak = pd.read_csv(zoo.shipped_models_dir() / f"{row.job_id} kodak" / "measures.csv")
    assert len(kodak) == 24
    assert round(kodak["bpp"].mean(), 4) == row.kodak_bpp
    assert round(kodak["ms-ssim"].mean(), 4) == row.kodak_ms_ssim
    assert f"{row.kodak_bpp:.4f} bpp" in row.description


def test_find_by_name_job_id_path_or_fingerprint():
    hi = zoo.find("hi")
    for spec in ("1126_0507_2", hi.log_dir, hi.log_dir / "ckpts", str(hi.log_dir),
                 "09f9f062bba32a7f", "09F9F062BBA32A7F"):
        assert zoo.find(spec) == hi, spec
    assert zoo.find_by_fingerprint(bytes.fromhex(hi.fingerprint)) == hi
    assert api.DEFAULT_JOB == zoo.find(api.DEFAULT_MODEL).job_id == "1126_0305_2"
    with pytest.raises(UnknownModelError, match="no model 'huge'.*low: a7c36926f8c5f1cd"):
        zoo.find("huge")


def test_decode_finds_the_model_by_fingerprint(tmp_path, capsys):
    photo = _write_photo(tmp_path / "photo.png")
    assert cli.main(["encode", "-m", "hi", str(photo), "-o", str(tmp_path / "photo.imgc")]) == 0
    data = (tmp_path / "photo.imgc").read_bytes()
    assert data[5:13].hex() == zoo.find("hi").fingerprint
    assert cli.main(["decode", str(tmp_path / "photo.imgc"), "-o", str(tmp_path / "out.png")]) == 0
    assert "model hi" in capsys.readouterr().out
    decoded = np.asarray(Image.open(tmp_path / "out.png"))
    assert np.array_equal(decoded, api.decompress(data))  # the API finds it the same way
    assert api.compress(str(photo), model="hi") == data

    assert cli.main(["info", str(tmp_path / "photo.imgc")]) == 0
    out = capsys.readouterr().out
    assert "model: hi (09f9f062bba32a7f)" in out and "image: 32x24" in out
    assert f"size: {len(data)} bytes" in out and f"bpp: {8 * len(data) / 768:.4f}" in out


def test_unknown_fingerprint_names_it_and_the_known_ones(tmp_path, capsys):
    photo = _write_photo(tmp_path / "photo.png")
    data = bytearray(api.compress(str(photo), model="low"))
    data[5:13] = bytes.fromhex("0123456789abcdef")
    forged = tmp_path / "forged.imgc"
    forged.write_bytes(bitstream.reseal(bytes(data)))
    assert cli.main(["decode", str(forged), "-o", str(tmp_path / "out.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "fingerprint 0123456789abcdef" in err
    assert all(f"{row.name}: {row.fingerprint}" in err for row in zoo.SHIPPED)
    assert not (tmp_path / "out.png").exists()
    with pytest.raises(UnknownModelError, match="0123456789abcdef"):
        api.decompress(forged.read_bytes())
    assert cli.main(["info", str(forged)]) == 0
    assert "model: unknown, fingerprint 0123456789abcdef" in capsys.readouterr().out


def test_models_lists_the_shipped_ones(capsys):
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "job", "id"]
    for row, line in zip(zoo.SHIPPED, lines[1:], strict=True):
        assert line.split()[:6] == [row.name, row.job_id, row.fingerprint, f"{row.kodak_bpp:.4f}",
                                    "/", f"{row.kodak_ms_ssim:.4f}"]
        assert line.endswith(str(zoo.find(row.name).log_dir))


def test_encode_a_folder(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(2):
        _write_photo(images / f"im{seed}.png", seed=seed)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert cli.main(["encode", str(images), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["im0.imgc", "im1.imgc"]
    assert "im1.imgc" in capsys.readouterr().out
    for seed in range(2):  # the default model: med
        assert (out / f"im{seed}.imgc").read_bytes()[5:13].hex() == zoo.find("med").fingerprint
    # the same name from two folders would overwrite: refused before any work
    assert cli.main(["encode", str(images), str(images / "im0.png"), "-o",
                     str(tmp_path / "twice")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: several images") and not (tmp_path / "twice").exists()


def test_models_search_path(trained_log_dir, tmp_path, monkeypatch, capsys):
    """A trained log dir becomes known through $IMGCOMP_MODELS: listed, found by job id and
    fingerprint, and chosen by decode from a file's header."""
    monkeypatch.setenv(zoo.MODELS_PATH_ENV,
                       os.pathsep.join([str(tmp_path / "missing"), str(trained_log_dir.parent)]))
    (model,) = zoo.search_path_models()
    assert model.log_dir == trained_log_dir and model.shipped is None
    fingerprint = model_fingerprint(api.load_model(trained_log_dir)).hex()
    assert model.fingerprint == fingerprint
    assert zoo.find(model.job_id) == zoo.find(fingerprint) == zoo.find(trained_log_dir) == model

    assert cli.main(["models"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:3] == [model.job_id, model.job_id,
                                                                    fingerprint]
    photo = _write_photo(tmp_path / "photo.png", 16, 16)
    assert cli.main(["encode", "--model", str(trained_log_dir), str(photo), "-o",
                     str(tmp_path / "photo.imgc")]) == 0
    assert cli.main(["decode", str(tmp_path / "photo.imgc"), "-o", str(tmp_path / "out.png")]) == 0
    assert f"model {model.job_id}" in capsys.readouterr().out
    monkeypatch.delenv(zoo.MODELS_PATH_ENV)
    assert cli.main(["decode", str(tmp_path / "photo.imgc"), "-o", str(tmp_path / "out.png")]) == 1
    assert f"no known model has fingerprint {fingerprint}" in capsys.readouterr().err
