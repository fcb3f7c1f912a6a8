"""val.py on a checkpoint trained for a few steps: CSV, reconstructions, sizes, bpp, errors."""

import csv
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgcomp.base import atomic
from imgcomp.base.image_files import write_image
from imgcomp.checkpoints.log_dirs import list_checkpoints, load_codec
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.evaluation import validation
from imgcomp.evaluation.quality import ms_ssim_uint8
from imgcomp.nets.autoencoder import pad_to_multiple


def _photo_like(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 80 * np.sin(xx / 9 + seed), 100 + yy * 0.5, (xx + yy) % 200], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def job(trained_copy):
    """The tiny trained job (checkpoints at steps 1, 2 and 3), this test's own copy: val.py
    writes its results next to the log dir."""
    return trained_copy.parent, trained_copy.name.split(" ")[0], trained_copy


@pytest.fixture
def images(tmp_path):
    """Odd sizes and non-RGB modes."""
    folder = tmp_path / "testset"
    folder.mkdir()
    Image.fromarray(_photo_like(176, 192, 1)).save(folder / "big.png")
    Image.fromarray(_photo_like(43, 57, 2)).save(folder / "odd.png")
    Image.fromarray(_photo_like(32, 40, 3)[..., 0]).save(folder / "gray.png")
    rgba = np.dstack([_photo_like(24, 24, 4), np.full((24, 24), 200, np.uint8)])
    Image.fromarray(rgba).save(folder / "rgba.png")
    return folder


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_val_writes_measures_and_reconstructions(job, images, capsys):
    logs, job_id, log_dir = job
    assert validation.main([str(logs), job_id, str(images / "*.png"), "--save_ours",
                            "--device", "cpu"]) == 0
    out_dir = logs / f"{job_id} testset"
    with open(out_dir / "measures.csv") as f:
        assert f.readline().strip() == "img_name,bpp,ms-ssim,psnr"
    rows = {r["img_name"]: r for r in _rows(out_dir / "measures.csv")}
    assert sorted(rows) == ["big.png", "gray.png", "odd.png", "rgba.png"]
    out = capsys.readouterr().out
    assert "note: gray.png is L" in out and "note: rgba.png is RGBA" in out
    assert "mean bpp=" in out

    model = load_codec(log_dir / "ckpts", 3, torch.device("cpu"))
    for name, row in rows.items():
        original = np.array(Image.open(images / name).convert("RGB"))
        saved = np.asarray(Image.open(out_dir / "imgs" / name))
        assert saved.shape == original.shape and saved.dtype == np.uint8
        # bpp: the symbols' cross-entropy over the *original* pixel count, not the padded one.
        x = torch.from_numpy(original).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            bits = float(model(pad_to_multiple(x)).bitcost.double().sum())
        h, w = original.shape[:2]
        assert float(row["bpp"]) == pytest.approx(bits / (h * w), rel=1e-5)
        # PSNR of the saved PNG, computed independently.
        mse = np.mean((saved.astype(np.float64) - original) ** 2)
        assert float(row["psnr"]) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-3)

        # MS-SSIM of the saved PNG with the project's one definition (checked against the
        # golden values in test_metrics): the CSV measures exactly what was saved.
        assert float(row["ms-ssim"]) == pytest.approx(ms_ssim_uint8(original, saved), abs=2e-6)


def test_checkpoint_selection_and_memory(job, images, capsys):
    logs, job_id, _ = job
    args = [str(logs), job_id, str(images), "--how_many", "1", "--device", "cpu"]
    assert validation.main([*args, "--ckpt_step", "2", "--reset"]) == 0
    out_dir = logs / f"{job_id} testset"
    assert sorted(p.name for p in out_dir.glob("measures_*.csv")) == [
        "measures_1.csv", "measures_3.csv"]
    assert sorted(json.loads((out_dir / "validated.json").read_text())) == ["1", "3"]
    assert len(_rows(out_dir / "measures.csv")) == 1
    capsys.readouterr()
    assert validation.main([*args, "--ckpt_step", "2"]) == 0
    assert capsys.readouterr().out.count("already validated") == 2
    assert validation.main([*args, "--restore_itr", "2"]) == 0
    assert (out_dir / "measures_2.csv").is_file()


def test_original_short_flags(job, images, capsys):
    """-i N: the latest checkpoint <= N; -o: --save_ours; -cache accepted and ignored."""
    logs, job_id, _ = job
    assert validation.main([str(logs), job_id, str(images), "--how_many", "1", "--reset",
                            "-i", "99", "-o", "-cache", "100", "--device", "cpu"]) == 0
    out_dir = logs / f"{job_id} testset"
    assert sorted(json.loads((out_dir / "validated.json").read_text())) == ["3"]
    assert [p.name for p in (out_dir / "imgs").iterdir()] == ["big.png"]
    assert "note: --image_cache_max is ignored" in capsys.readouterr().out
    # The default --ckpt_step 2: every 2nd checkpoint plus the last.
    assert validation.main([str(logs), job_id, str(images), "--how_many", "1",
                            "--device", "cpu"]) == 0
    assert sorted(json.loads((out_dir / "validated.json").read_text())) == ["1", "3"]


def test_real_bpp_writes_files_and_csv(job, images, capsys):
    logs, job_id, _ = job
    assert validation.main([str(logs), job_id, str(images), "--real_bpp", "--reset",
                            "--device", "cpu"]) == 0
    out_dir = logs / f"{job_id} testset"
    rows = {r["img_name"]: r for r in _rows(out_dir / "real_bpp.csv")}
    with open(out_dir / "real_bpp.csv") as f:
        assert f.readline().strip() == "img_name,bpp_real,bpp_theory,bpp_loss,encode_s,decode_s"
    measures = {r["img_name"]: r for r in _rows(out_dir / "measures.csv")}
    assert sorted(rows) == sorted(measures)
    for name, row in rows.items():
        stream = out_dir / "bitstreams" / name.replace(".png", ".imgc")
        h, w = np.asarray(Image.open(images / name)).shape[:2]
        assert float(row["bpp_real"]) == pytest.approx(8 * stream.stat().st_size / (h * w),
                                                       rel=1e-5)
        assert float(row["bpp_loss"]) == pytest.approx(float(measures[name]["bpp"]), rel=1e-4)
        # Integer coding model ~ float model; the file adds a 31-byte header and a flush word.
        assert float(row["bpp_theory"]) == pytest.approx(float(row["bpp_loss"]), rel=0.01)
        overhead = 8 * (31 + 8) / (h * w)
        assert float(row["bpp_theory"]) <= float(row["bpp_real"])
        assert float(row["bpp_real"]) <= 1.01 * float(row["bpp_theory"]) + overhead
    assert "real/theoretical=" in capsys.readouterr().out


def test_samples_are_bundled_photos():
    from imgcomp.base.image_files import resolve_images

    name, paths = resolve_images("samples")
    assert name == "samples" and len(paths) == 5
    for path in paths:
        with Image.open(path) as img:
            assert img.mode == "RGB" and min(img.size) >= 300


def test_select_steps():
    assert validation.select_steps([1, 2, 3, 4, 5], -1, None) == [5]
    assert validation.select_steps([1, 2, 3, 4, 5], 2, None) == [1, 3, 5]
    assert validation.select_steps([1, 2, 3, 4], 2, None) == [1, 3, 4]
    assert validation.select_steps([1, 2, 3], -1, 2) == [2]
    assert validation.select_steps([1, 2, 3], -1, -1) == [3]


def test_kodak_name_uses_val_root(job, tmp_path, monkeypatch):
    logs, job_id, _ = job
    (tmp_path / "kodak").mkdir()
    Image.fromarray(_photo_like(24, 32, 5)).save(tmp_path / "kodak/k1.png")
    monkeypatch.setenv("VAL_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert validation.main([str(logs), job_id, "kodak", "--device", "cpu"]) == 0
    assert len(_rows(logs / f"{job_id} kodak" / "measures.csv")) == 1


@pytest.mark.parametrize("case", ["no_files", "unknown_job"])
def test_bad_input_gives_one_error_line(job, images, case, capsys):
    logs, job_id, _ = job
    spec, job_ids = str(images / "*.png"), job_id
    if case == "no_files":
        spec = str(images / "*.nothing")
    else:
        job_ids = "0101_0000"
    code = validation.main([str(logs), job_ids, spec, "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    expected = {"no_files": "*.nothing", "unknown_job": "0101_0000"}[case]
    assert expected in err
    assert list_checkpoints(logs / f"{job[2].name}")  # nothing of the job was touched


def _messages(err: str) -> list[str]:
    """val.py's own stderr lines, without tqdm's progress bars (img/s, or s/img when slow)."""
    return [line for line in err.splitlines()
            if line.strip() and "img/s]" not in line and "s/img]" not in line]


def _count_encoder_calls(monkeypatch) -> list[str]:
    """Records the size of every image the model encodes (one call per measured image)."""
    calls = []
    symbols = ImageCodec.symbols

    def counting(self, image):
        calls.append("x".join(map(str, image.shape[:2])))
        return symbols(self, image)

    monkeypatch.setattr(ImageCodec, "symbols", counting)
    return calls


def test_unreadable_image_skipped_and_rerun_measures_only_it(job, images, capsys, monkeypatch):
    """One bad file: the others are measured, the bad one named when met and at the end, a
    distinct exit status; once it is fixed a re-run measures that image only and writes the
    same CSVs as one clean run."""
    logs, job_id, _ = job
    args = [str(logs), job_id, str(images), "--real_bpp", "--save_ours", "--device", "cpu"]
    (images / "zz_bad.png").write_bytes(b"not a png")
    calls = _count_encoder_calls(monkeypatch)
    assert validation.main(args) == validation.EXIT_UNREADABLE
    err = _messages(capsys.readouterr().err)
    # Named once although both validated steps (1 and 3) met it, then listed at the end.
    assert len(err) == 2 and all("zz_bad.png" in line for line in err)
    assert err[0].startswith("warning: cannot read image")
    assert err[1].startswith("error: 1 unreadable image(s) not measured")
    assert len(calls) == 2 * 4
    out_dir = logs / f"{job_id} testset"
    for name in ("measures.csv", "measures_1.csv", "real_bpp.csv", "real_bpp_3.csv"):
        assert [r["img_name"] for r in _rows(out_dir / name)] == [
            "big.png", "gray.png", "odd.png", "rgba.png"]
    assert not (out_dir / "validated.json").exists()  # no step is complete

    Image.fromarray(_photo_like(16, 24, 6)).save(images / "zz_bad.png")
    calls.clear()
    assert validation.main(args) == 0
    assert calls == ["16x24", "16x24"]  # steps 1 and 3: the fixed image only
    assert sorted(json.loads((out_dir / "validated.json").read_text())) == ["1", "3"]
    assert sorted(p.name for p in (out_dir / "imgs").iterdir()) == [
        "big.png", "gray.png", "odd.png", "rgba.png", "zz_bad.png"]
    resumed = {name: (out_dir / name).read_text() for name in ("measures.csv", "measures_1.csv")}
    real = _rows(out_dir / "real_bpp.csv")
    validation.main([*args, "--reset"])
    for name, text in resumed.items():
        assert (out_dir / name).read_text() == text
    timings = ("encode_s", "decode_s")
    assert [{k: v for k, v in r.items() if k not in timings} for r in real] == [
        {k: v for k, v in r.items() if k not in timings} for r in _rows(out_dir / "real_bpp.csv")]


def _disk_full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES])
def test_unwritable_output_gives_one_line_and_no_partial_csv(job, images, error, capsys,
                                                             monkeypatch):
    """A full disk (simulated: fsync fails) or a read-only folder (simulated: no temporary file
    can be made; root ignores chmod): one line naming the file, exit 1, old CSVs intact."""
    logs, job_id, _ = job
    args = [str(logs), job_id, str(images), "--how_many", "1", "--device", "cpu"]
    assert validation.main([*args, "--restore_itr", "2"]) == 0
    out_dir = logs / f"{job_id} testset"
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    capsys.readouterr()
    if error == errno.ENOSPC:
        monkeypatch.setattr(atomic.os, "fsync", _disk_full)
    else:
        def fail(dir, prefix, suffix):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES),
                                  os.path.join(dir, prefix + "abc" + suffix))

        monkeypatch.setattr(atomic.tempfile, "mkstemp", fail)
    assert validation.main([*args, "--restore_itr", "3"]) == 1
    err = _messages(capsys.readouterr().err)
    assert err == [f"error: cannot write {out_dir / 'measures_3.csv'}: {os.strerror(error)}"]
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before  # no temporary file


def test_write_image_is_atomic(tmp_path, monkeypatch):
    """A failed PNG write leaves the old file and no temporary file."""
    path = tmp_path / "x.png"
    write_image(path, _photo_like(8, 8, 0))
    old = path.read_bytes()
    monkeypatch.setattr(atomic.os, "fsync", _disk_full)
    with pytest.raises(OSError):
        write_image(path, _photo_like(8, 8, 1))
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["x.png"]
