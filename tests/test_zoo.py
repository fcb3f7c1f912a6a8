"""The model registry (imgcomp.checkpoints.zoo): shipped names and fingerprints, lookups, and the
CLI's
encode/decode/info/models by name and by the header's fingerprint."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgcomp import api, cli
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.zoo import UnknownModelError
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import model_fingerprint


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
    with pytest.raises(UnknownModelError, match=r"no model 'huge'.*\(known: low, med, hi;"):
        zoo.find("huge")


def test_a_misspelt_name_loads_no_weights(trained_log_dir, monkeypatch):
    """Only a spec shaped like a fingerprint (16 hex digits) is matched against fingerprints,
    the one lookup that loads the weights of the models not shipped; the error names models
    by name or job id, so it loads none either."""
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(trained_log_dir.parent))
    loads = []
    fingerprint_of = zoo.fingerprint_of
    monkeypatch.setattr(zoo, "fingerprint_of", lambda *a: loads.append(a) or fingerprint_of(*a))
    job_id = zoo.job_id_of(trained_log_dir)
    for spec in ("hii", "abc", "0123456789abcdeg"):
        with pytest.raises(UnknownModelError) as error:
            zoo.find(spec)
        assert loads == [], spec
        assert str(error.value) == (
            f"no model {spec!r}: not a shipped name, a log dir, or the job id or fingerprint of "
            f"a known model (known: low, med, hi, {job_id}; more with ${zoo.MODELS_PATH_ENV}; "
            "`imgcomp models` lists them)")
    with pytest.raises(UnknownModelError, match="no model '0123456789abcdef'"):
        zoo.find("0123456789abcdef")
    assert len(loads) == 1  # a fingerprint: the one model not shipped, once
    model = zoo.find(job_id)
    assert zoo.find(model.fingerprint.upper()) == model


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
    assert "(known: low, med, hi; `imgcomp models` lists their fingerprints)" in err
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


def _count_calls(monkeypatch, target: str) -> list:
    """Replace the function at dotted `target` by one that records its calls, then calls it."""
    module, name = target.rsplit(".", 1)
    original = getattr(__import__(module, fromlist=[name]), name)
    calls = []
    monkeypatch.setattr(target, lambda *a, **k: calls.append(a) or original(*a, **k))
    return calls


def test_api_looks_each_model_up_once(trained_log_dir, tmp_path, monkeypatch):
    """compress/decompress scan for a model once per name or fingerprint (and per
    $IMGCOMP_MODELS: a model made known later is found), and parse a file's header once."""
    monkeypatch.delenv(zoo.MODELS_PATH_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # part of the lookups' key: none cached yet
    api.clear_caches()
    photo = _write_photo(tmp_path / "photo.png", 16, 16)
    low_dir = zoo.find("low").log_dir
    scans = _count_calls(monkeypatch, "imgcomp.checkpoints.zoo.shipped_models")
    data = api.compress(str(photo), model="low")
    assert api.compress(str(photo), model="low") == data and len(scans) == 1
    unpacks = _count_calls(monkeypatch, "imgcomp.entropy_coding.bitstream.unpack")
    monkeypatch.setattr("imgcomp.codec.image_codec.unpack", bitstream.unpack)  # the same counter
    decoded = api.decompress(data)
    assert len(unpacks) == 1 and len(scans) == 2
    assert np.array_equal(api.decompress(data), decoded)
    assert np.array_equal(api.decompress(data, model="low"), decoded)
    assert len(unpacks) == 3 and len(scans) == 2  # "low" was looked up by compress
    assert np.array_equal(api.decompress(data, model=low_dir), decoded)
    scanned = len(scans)  # a new spec: looked up
    assert np.array_equal(api.decompress(data, model=low_dir), decoded)
    assert scanned > 2 and len(scans) == scanned and len(unpacks) == 5

    # Failed lookups are not cached, and $IMGCOMP_MODELS keys the cache.
    ours = api.load_model(trained_log_dir).compress(str(photo))
    with pytest.raises(UnknownModelError):
        api.decompress(ours)
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(trained_log_dir.parent))
    assert api.decompress(ours).shape == (16, 16, 3)
    monkeypatch.delenv(zoo.MODELS_PATH_ENV)
    with pytest.raises(UnknownModelError):
        api.decompress(ours)


def test_decode_looks_the_model_up_once(tmp_path, monkeypatch, capsys):
    photo = _write_photo(tmp_path / "photo.png")
    assert cli.main(["encode", "-m", "low", str(photo), "-o", str(tmp_path / "photo.imgc")]) == 0
    finds = _count_calls(monkeypatch, "imgcomp.checkpoints.zoo.find")
    by_fingerprint = _count_calls(monkeypatch, "imgcomp.checkpoints.zoo.find_by_fingerprint")
    unpacks = _count_calls(monkeypatch, "imgcomp.entropy_coding.bitstream.unpack")
    monkeypatch.setattr("imgcomp.codec.image_codec.unpack", bitstream.unpack)  # the same counter
    out = str(tmp_path / "out.png")
    assert cli.main(["decode", str(tmp_path / "photo.imgc"), "-o", out]) == 0
    assert (len(finds), len(by_fingerprint), len(unpacks)) == (0, 1, 1)
    assert cli.main(["decode", "-m", "low", str(tmp_path / "photo.imgc"), "-o", out]) == 0
    assert (len(finds), len(by_fingerprint), len(unpacks)) == (1, 1, 2)
    assert capsys.readouterr().out.count("model low") == 2
