"""Tests of imgcomp.evaluation.baselines (other_codecs.py): classical-codec baselines measured with
Pillow."""

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.evaluation import baselines as codecs_mod
from imgcomp.evaluation.baselines import CODECS, main, roundtrip
from imgcomp.evaluation.quality import ms_ssim_uint8, psnr_uint8

AVAILABLE = [name for name, codec in CODECS.items() if codec.available()]
# Every codec, a codec this Pillow lacks (e.g. AVIF) skipped.
ALL_CODECS = [pytest.param(name, marks=pytest.mark.skipif(name not in AVAILABLE,
                                                          reason=f"Pillow lacks {name}"))
              for name in CODECS]
# Two settings per codec, low then high quality (jp2k: compression ratios, so high then low);
# WebP's is fractional, which libwebp takes as it is.
SETTINGS = {"jpeg": (10, 70), "webp": (10, 70.5), "jp2k": (60, 12), "avif": (20, 70)}
# Each codec's Pillow options, written out independently of CODECS.
PILLOW_SAVE = {
    "jpeg": lambda v: ("JPEG", {"quality": v}),
    "webp": lambda v: ("WEBP", {"quality": v, "method": 6}),
    "jp2k": lambda v: ("JPEG2000", {"quality_mode": "rates", "quality_layers": [v],
                                    "irreversible": True}),
    "avif": lambda v: ("AVIF", {"quality": v}),
}
IMAGE_SIZES = {"a.png": (48, 64), "b.png": (56, 40)}  # H x W


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus texture, so that quality settings matter."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    base = np.stack([x / w * 200, y / h * 180, (x + y) / (h + w) * 220 + 20], axis=-1)
    noise = np.random.default_rng(seed).normal(0, 12, (h, w, 3))
    return np.clip(base + 30 * np.sin(x / 3)[..., None] + noise, 0, 255).astype(np.uint8)


def make_images(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for seed, (name, (h, w)) in enumerate(IMAGE_SIZES.items()):
        arrays[name] = synthetic(h, w, seed)
        Image.fromarray(arrays[name]).save(folder / name)
    return arrays


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def quality_args(codecs: list[str]) -> list[str]:
    return ["--qualities", *(f"{c}={','.join(map(str, SETTINGS[c]))}" for c in codecs)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One evaluation of every available codec at two settings on two small images."""
    root = tmp_path_factory.mktemp("codecs")
    arrays = make_images(root / "imgs")
    status = main([str(root / "imgs"), "--out", str(root / "out"), "--codecs",
                   ",".join(AVAILABLE), "--workers", "1", *quality_args(AVAILABLE)])
    return status, root / "out" / "imgs", arrays


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_measures_files_at_documented_paths(run, codec):
    status, dataset_dir, _ = run
    assert status == 0
    folders = sorted(p.name for p in (dataset_dir / codec).iterdir())
    assert folders == sorted(CODECS[codec].folder(v) for v in SETTINGS[codec])
    if codec == "webp":
        assert folders == ["q_010", "q_070.5"]
    for folder in folders:
        rows = read_csv(dataset_dir / codec / folder / "measures.csv")
        assert rows[0] == ["img_name", "bpp", "ms-ssim", "psnr"]
        assert [r[0] for r in rows[1:]] == ["a.png", "b.png"]


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_bpp_and_metrics_match_an_independent_encoding(run, codec):
    _, dataset_dir, arrays = run
    for value in SETTINGS[codec]:
        rows = read_csv(dataset_dir / codec / CODECS[codec].folder(value) / "measures.csv")
        for name, bpp, msssim, psnr in rows[1:]:
            original = arrays[name]
            fmt, options = PILLOW_SAVE[codec](value)
            buf = io.BytesIO()
            Image.fromarray(original).save(buf, format=fmt, **options)
            h, w = original.shape[:2]
            assert float(bpp) == pytest.approx(len(buf.getvalue()) * 8 / (h * w), abs=2e-6)
            decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            assert float(msssim) == pytest.approx(ms_ssim_uint8(original, decoded), abs=2e-6)
            assert float(psnr) == pytest.approx(psnr_uint8(original, decoded), abs=2e-4)


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_higher_quality_costs_more_bits_and_gains_psnr(run, codec):
    _, dataset_dir, _ = run
    low, high = (read_csv(dataset_dir / codec / CODECS[codec].folder(v) / "measures.csv")[1:]
                 for v in SETTINGS[codec])
    for row_low, row_high in zip(low, high, strict=True):
        assert float(row_high[1]) > float(row_low[1])
        assert float(row_high[3]) > float(row_low[3])


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_roundtrip_keeps_odd_sizes(codec):
    original = synthetic(17, 33, seed=3)
    num_bits, decoded = roundtrip(CODECS[codec], original, CODECS[codec].grid[0])
    assert decoded.shape == original.shape and decoded.dtype == np.uint8
    assert num_bits > 0 and num_bits % 8 == 0


def test_default_grids_name_sortable_folders():
    for codec in CODECS.values():
        assert 10 <= len(codec.grid) <= 16
        names = [codec.folder(v) for v in codec.grid]
        assert [float(n.split("_")[1]) for n in names] == list(codec.grid)
        assert sorted(names) == sorted(names, key=lambda n: float(n.split("_")[1]))


def test_fractional_settings_name_folders_and_whole_ones_keep_theirs(tmp_path):
    make_images(tmp_path / "imgs")
    assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--codecs", "webp",
                 "--qualities", "75.0,75.25", "--workers", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "imgs" / "webp").iterdir()) == [
        "q_075", "q_075.25"]


def test_unreadable_image_is_skipped_with_a_warning(tmp_path, capsys):
    make_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    status = main([str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--codecs", "jpeg",
                   "--qualities", "50", "--workers", "1"])
    assert status == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "broken.png" in captured.err
    rows = read_csv(tmp_path / "out" / "imgs" / "jpeg" / "q_050" / "measures.csv")
    assert [r[0] for r in rows[1:]] == ["a.png", "b.png"]
    assert "jpeg" in captured.out and "q_050" in captured.out  # the summary table


def test_no_readable_images_is_an_error(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--codecs", "jpeg",
                 "--qualities", "50", "--workers", "1"]) == 1
    assert "error: none of the 1 images could be read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_no_matching_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_unknown_codec_lists_the_valid_ones(tmp_path, capsys):
    make_images(tmp_path / "imgs")
    assert main([str(tmp_path / "imgs"), "--codecs", "jpeg,bpg"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bpg" in err
    assert all(name in err for name in CODECS)


@pytest.mark.parametrize("qualities", [["jpeg=0"], ["webp=101"], ["jp2k=0"], ["x,5"],
                                       ["avif=50"], ["jpeg=50.5"], ["webp=nan"]])
def test_invalid_qualities_are_an_error(tmp_path, capsys, qualities):
    make_images(tmp_path / "imgs")
    status = main([str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                   "--codecs", "jpeg,webp,jp2k", "--qualities", *qualities])
    assert status == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_codec_missing_from_pillow_is_skipped(tmp_path, capsys, monkeypatch):
    make_images(tmp_path / "imgs")
    monkeypatch.setattr(codecs_mod.features, "check", lambda name: name != "avif")
    args = [str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--qualities", "50",
            "--workers", "1"]
    assert main([*args, "--codecs", "jpeg,avif"]) == 0
    assert "avif" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out" / "imgs").iterdir()] == ["jpeg"]
    assert main([*args, "--codecs", "avif"]) == 1
    assert capsys.readouterr().err.count("error: ") == 1


def test_default_root_is_env_or_cwd(tmp_path, monkeypatch):
    make_images(tmp_path / "imgs")
    args = [str(tmp_path / "imgs"), "--codecs", "jpeg", "--qualities", "50", "--workers", "1"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OTHER_CODECS_ROOT", raising=False)
    assert main(args) == 0
    assert (tmp_path / "other_codecs" / "imgs" / "jpeg" / "q_050" / "measures.csv").is_file()
    monkeypatch.setenv("OTHER_CODECS_ROOT", str(tmp_path / "env_root"))
    assert main(args) == 0
    assert (tmp_path / "env_root" / "imgs" / "jpeg" / "q_050" / "measures.csv").is_file()


def test_worker_processes_give_the_same_measures(tmp_path):
    make_images(tmp_path / "imgs")
    for workers in ("1", "2"):
        assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / workers), "--codecs",
                     "jpeg,webp", "--qualities", "30", "--workers", workers]) == 0
    for codec in ("jpeg", "webp"):
        rows = [read_csv(tmp_path / w / "imgs" / codec / "q_030" / "measures.csv")
                for w in ("1", "2")]
        assert rows[0] == rows[1]



def test_fractional_setting_of_an_integer_codec_names_the_codec(tmp_path, capsys):
    make_images(tmp_path / "imgs")
    assert main([str(tmp_path / "imgs"), "--out", str(tmp_path / "out"), "--codecs", "jpeg",
                 "--qualities", "50.5"]) == 1
    assert capsys.readouterr().err == "error: jpeg: setting 50.5 must be a whole number\n"
    assert not (tmp_path / "out").exists()
