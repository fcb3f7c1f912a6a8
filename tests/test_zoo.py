"""The model registry (imgcomp.checkpoints.zoo): shipped names and fingerprints, lookups, and the
CLI's
encode/decode/info/models by name and by the header's fingerprint."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imgcomp import api, cli
from imgcomp.checkpoints import fingerprints, zoo
from imgcomp.checkpoints.zoo import UnknownModelError
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import model_fingerprint


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Each test runs in its own folder: the working directory's logs/ is searched for models,
    and a checkout's own logs/ must change no result."""
    monkeypatch.chdir(tmp_path)


def _missing(folder):
    return "" if folder.is_dir() else " (missing)"


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
            f"no model {spec!r}: not a shipped name, a log dir, LOG_DIR_ROOT/JOB_ID, or the job "
            f"id or fingerprint of a known model (known: low, med, hi, {job_id}; looked in "
            f"{zoo.shipped_models_dir()}, {trained_log_dir.parent}, {zoo.user_models_dir()}"
            f"{_missing(zoo.user_models_dir())}, logs (missing); more with "
            f"${zoo.MODELS_PATH_ENV}; `imgcomp models` lists them)")
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
    shipped, authors = lines[1:1 + len(zoo.SHIPPED)], lines[1 + len(zoo.SHIPPED):]
    for row, line in zip(zoo.SHIPPED, shipped, strict=True):
        assert line.split()[:6] == [row.name, row.job_id, row.fingerprint, f"{row.kodak_bpp:.4f}",
                                    "/", f"{row.kodak_ms_ssim:.4f}"]
        assert line.endswith(str(zoo.find(row.name).log_dir))
    # The authors' models follow, with the original README's labels and numbers.
    for row, line in zip(zoo.AUTHORS, authors, strict=True):
        assert line.split()[:7] == [row.label, row.job_id, "-", f"{row.kodak_bpp:.3f}", "/",
                                    f"{row.kodak_ms_ssim:.3f}", "(paper)"]
        assert line.endswith("(not installed: imgcomp models --download authors)")


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
    by_fingerprint = _count_calls(monkeypatch,
                                  "imgcomp.checkpoints.zoo.find_all_by_fingerprint")
    unpacks = _count_calls(monkeypatch, "imgcomp.entropy_coding.bitstream.unpack")
    monkeypatch.setattr("imgcomp.codec.image_codec.unpack", bitstream.unpack)  # the same counter
    out = str(tmp_path / "out.png")
    assert cli.main(["decode", str(tmp_path / "photo.imgc"), "-o", out]) == 0
    assert (len(finds), len(by_fingerprint), len(unpacks)) == (0, 1, 1)
    assert cli.main(["decode", "-m", "low", str(tmp_path / "photo.imgc"), "-o", out]) == 0
    assert (len(finds), len(by_fingerprint), len(unpacks)) == (1, 1, 2)
    assert capsys.readouterr().out.count("model low") == 2


def _copy_log_dir(log_dir, root, job_id):
    """A copy of `log_dir` under `root`, as job `job_id`: the same weights."""
    copy = root / log_dir.name.replace(zoo.job_id_of(log_dir), job_id, 1)
    shutil.copytree(log_dir, copy)
    return copy


def test_a_model_just_trained_is_found_by_its_job_id(trained_log_dir, tmp_path, monkeypatch,
                                                     capsys):
    """train.py's default log root, the working directory's logs/, is searched for job ids;
    LOG_DIR_ROOT/JOB_ID (as val.py takes a job) names a log dir anywhere."""
    monkeypatch.delenv(zoo.MODELS_PATH_ENV, raising=False)
    trained = _copy_log_dir(trained_log_dir, tmp_path / "logs", "1207_1509")
    other = _copy_log_dir(trained_log_dir, tmp_path / "runs", "1207_1510")
    assert zoo.find("1207_1509").log_dir.resolve() == trained.resolve()
    for spec in ("logs/1207_1509", f"{tmp_path}/logs/1207_1509"):
        assert zoo.find(spec).log_dir.resolve() == trained.resolve()
    assert zoo.find("runs/1207_1510").log_dir.resolve() == other.resolve()
    photo = _write_photo(tmp_path / "photo.png", 16, 16)
    assert cli.main(["encode", "-m", "1207_1509", "photo.png", "-o", "photo.imgc"]) == 0
    assert cli.main(["encode", "-m", "runs/1207_1510", str(photo), "-o", "b.imgc"]) == 0
    capsys.readouterr()

    with pytest.raises(UnknownModelError, match=r"^no model 'runs/1207_1599': no job "
                       r"'1207_1599' in runs \(jobs there: 1207_1510\)$"):
        zoo.find("runs/1207_1599")
    with pytest.raises(UnknownModelError, match=r"^no model 'nowhere/1207_1509': neither a log "
                       r"dir nor LOG_DIR_ROOT/JOB_ID \(no folder nowhere\)$"):
        zoo.find("nowhere/1207_1509")
    assert cli.main(["encode", "-m", "1207_1510", str(photo), "-o", "c.imgc"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no model '1207_1510'" in err
    # It names where it looked: $IMGCOMP_MODELS unset, the shipped models, the user's models
    # folder, logs/.
    assert (f"looked in ${zoo.MODELS_PATH_ENV} unset; {zoo.shipped_models_dir()}, "
            f"{zoo.user_models_dir()}{_missing(zoo.user_models_dir())}, logs;") in err


def test_identical_weights_decode_with_a_note_naming_the_candidates(trained_log_dir, tmp_path,
                                                                    monkeypatch, capsys):
    """Two log dirs with the same weights (same seed, same steps) share a fingerprint: decode
    uses the first in lookup order, the same every time, and says which others match."""
    root = tmp_path / "models"
    second = _copy_log_dir(trained_log_dir, root, "1207_1510")
    first = _copy_log_dir(trained_log_dir, root, "1207_1509")
    monkeypatch.setenv(zoo.MODELS_PATH_ENV, str(root))
    photo = _write_photo(tmp_path / "photo.png", 16, 16)
    assert cli.main(["encode", "-m", str(second), str(photo), "-o", "photo.imgc"]) == 0
    capsys.readouterr()
    assert [m.log_dir for m in zoo.find_all_by_fingerprint(
        (tmp_path / "photo.imgc").read_bytes()[5:13])] == [first, second]
    for _ in range(2):
        assert cli.main(["decode", "photo.imgc", "-o", "out.png"]) == 0
        captured = capsys.readouterr()
        assert "model 1207_1509)" in captured.out
        assert captured.err == ("note: 2 known models have this fingerprint (identical weights: "
                                f"the same decoder): 1207_1509 ({first}), 1207_1510 ({second}); "
                                "using 1207_1509\n")
    assert cli.main(["info", "photo.imgc"]) == 0
    assert "also 1207_1510 (identical weights)" in capsys.readouterr().out


def test_fingerprints_are_computed_once_per_checkpoint(trained_log_dir, tmp_path, monkeypatch):
    """A fingerprint is kept in the user's cache dir until its checkpoint changes, so listing
    and looking up models loads no weights the second time, in any process."""
    log_dir = _copy_log_dir(trained_log_dir, tmp_path, "1207_1509")
    expected = model_fingerprint(api.load_model(log_dir)).hex()
    loads = _count_calls(monkeypatch, "imgcomp.checkpoints.fingerprints.load_codec")
    assert fingerprints.fingerprint_of(log_dir) == expected and len(loads) == 1
    assert fingerprints.fingerprint_of(log_dir / "ckpts") == expected and len(loads) == 1
    assert fingerprints.cache_path().is_file()
    checkpoint = max((log_dir / "ckpts").glob("ckpt-*.pt"))
    os.utime(checkpoint, ns=(0, 0))  # rewritten, as far as the cache can tell
    assert fingerprints.fingerprint_of(log_dir) == expected and len(loads) == 2
    shutil.rmtree(log_dir)  # entries of checkpoints gone are dropped at the next write
    other = _copy_log_dir(trained_log_dir, tmp_path, "1207_1510")
    fingerprints.fingerprint_of(other)
    assert str(checkpoint) not in fingerprints.cache_path().read_text()
    fingerprints.cache_path().write_text("not json")  # a broken cache is only a cache
    assert fingerprints.fingerprint_of(other) == expected and len(loads) == 4
