"""The visual comparison figure (python -m imgcomp.evaluation.crop_figure)."""

import numpy as np
import pytest
from PIL import Image

from imgcomp.api import default_model_dir
from imgcomp.base.image_files import sample_photos
from imgcomp.evaluation import crop_figure as crops
from imgcomp.evaluation.baselines import CODECS, roundtrip


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(sample_photos()[0]).convert("RGB"))[100:164, 150:230]


@pytest.mark.parametrize("name,target", [("jpeg", 1.5), ("jp2k", 0.8)])
def test_closest_setting_matches_brute_force(photo, name, target):
    codec = CODECS[name]
    pixels = photo.shape[0] * photo.shape[1]
    candidates = range(1, 101) if name == "jpeg" else range(1, 301)
    bpps = {v: roundtrip(codec, photo, v)[0] / pixels for v in candidates}
    best_error = min(abs(b - target) for b in bpps.values())
    value, bpp, decoded = crops.closest_setting(codec, photo, target)
    assert bpp == pytest.approx(bpps[value])
    assert abs(bpp - target) == pytest.approx(best_error)
    assert decoded.shape == photo.shape


def test_figure_labels_carry_real_bpp(photo, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    out = tmp_path / "figs" / "crops.png"
    assert crops.main([str(image), "--model", str(default_model_dir()), "--box", "8,8,48,40",
                       "--codecs", "jpeg,webp", "-o", str(out)]) == 0
    assert Image.open(out).size[0] > 400
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Ours") and lines[1].startswith("JPEG (q=")
    ours_bpp = float(lines[0].split()[1])
    assert ours_bpp > 0.05
    # JPEG's pick is the setting closest to our real bitstream's bpp.
    jpeg_bpp = float(lines[1].split()[2])
    value = int(lines[1].split("q=")[1].split(")")[0])
    assert jpeg_bpp == pytest.approx(
        roundtrip(CODECS["jpeg"], photo, value)[0] / photo[..., 0].size, abs=5e-5)


def test_bad_arguments_give_clear_errors(photo, tmp_path, capsys):
    image = tmp_path / "photo.png"
    Image.fromarray(photo).save(image)
    model = str(default_model_dir())
    assert crops.main([str(image), "--model", model, "--box", "60,0,48,48",
                       "-o", str(tmp_path / "a.png")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert crops.main([str(tmp_path / "missing.png"), "--model", model]) == 1
    assert "missing.png" in capsys.readouterr().err
    assert crops.main([str(image), "--model", model, "--codecs", "gif"]) == 2
    assert "unknown codecs ['gif']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crops.main([str(image), "--model", model, "--box", "1,2,3"])
    assert "X,Y,W,H" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()
