"""imgcomp report: the page's contents for the tiny model on two small images, the page in a
real browser (headless Chromium), and the command's errors."""

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.base.image_files import read_image
from imgcomp.checkpoints.log_dirs import job_id_of
from imgcomp.cli import main as cli_main
from imgcomp.evaluation import baselines, report, validation
from imgcomp.evaluation.results import read_bpp_real, read_measures_csv

DATASET = "photos"  # the images' folder name, as val.py names the dataset


@pytest.fixture(scope="module")
def validated(tmp_path_factory, trained_log_dir, make_images):
    """(log dir root, job id, images folder, codecs root): the tiny model validated by val.py
    (--save_ours --real_bpp) on two images, and WebP / AVIF measured on them. Read-only."""
    root = tmp_path_factory.mktemp("report")
    logs = root / "logs"
    shutil.copytree(trained_log_dir, logs / trained_log_dir.name)
    job_id = job_id_of(trained_log_dir)
    images = root / DATASET
    make_images(images, count=2, size=(48, 64))
    assert validation.main([str(logs), job_id, str(images), "--save_ours", "--real_bpp",
                            "--device", "cpu"]) == 0
    codecs = root / "other_codecs"
    assert baselines.main([str(images), "--codecs", "webp,avif", "--qualities", "10,50,90",
                           "--out", str(codecs), "--workers", "1"]) == 0
    return logs, job_id, images, codecs


def _report(validated, out: Path, *extra: str, logs: Path | None = None) -> int:
    root, job_id, images, codecs = validated
    return cli_main(["report", str(logs or root), job_id, DATASET, "-o", str(out), "--images",
                     str(images), "--other_codecs_root", str(codecs), *extra])


def _table(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="rows-data">(.*?)</script>', page, re.S)
    return json.loads(block.group(1))


def _panels(page: str) -> list[tuple[str, np.ndarray]]:
    """(label, pixels) of every viewer panel, in page order."""
    found = re.findall(r'<figure class=panel data-label="([^"]*)">.*?<div class=vp>'
                       r'<img src="data:image/png;base64,([^"]*)"', page)
    return [(label, np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))))
            for label, data in found]


def test_page_contents(validated, tmp_path, capsys):
    logs, job_id, images, _ = validated
    out = tmp_path / "page.html"
    assert _report(validated, out, "--max_images", "1") == 0
    assert "wrote" in capsys.readouterr().out
    page = out.read_text()
    # Self-contained: every src / href is a data URI or an anchor of the page itself.
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs)
    assert "<svg" not in page and page.count('src="data:image/svg+xml;base64,') == 2

    table = _table(page)
    labels = [c["label"] for c in table["columns"]]
    assert labels[:6] == ["image", "job", "real bpp", "bpp (estimate)", "MS-SSIM", "PSNR [dB]"]
    assert labels[6:] == [f"{c} {m}" for c in ("WEBP", "AVIF") for m in ("bpp", "MS-SSIM", "PSNR")]
    result_dir = logs / f"{job_id} {DATASET}"
    measures = read_measures_csv(result_dir / "measures.csv")
    real = read_bpp_real(result_dir / "real_bpp.csv")
    assert [r[:6] for r in table["rows"]] == [
        [m.img_name, job_id, real[m.img_name], m.bpp, m.ms_ssim, m.psnr] for m in measures]
    # --max_images 1: codecs matched for the first image only, and only it has a viewer.
    first, second = table["rows"]
    assert all(v is not None for v in first[6:]) and all(v is None for v in second[6:])
    assert table["links"] == {"img0.png": "view-0"}

    panels = _panels(page)
    assert [label for label, _ in panels][:2] == ["Original", f"Ours ({job_id})"]
    assert [label.split(" ")[0] for label, _ in panels[2:]] == ["WEBP", "AVIF"]
    np.testing.assert_array_equal(panels[0][1], read_image(images / "img0.png"))
    # Ours is val.py's reconstruction (imgs/), and the codecs' bpp are those of the table.
    np.testing.assert_array_equal(panels[1][1], read_image(result_dir / "imgs" / "img0.png"))
    assert f'{first[6]:.3f} bpp · MS-SSIM {first[7]:.4f}' in page


def test_two_jobs(validated, tmp_path):
    """Each job has its own panels, codecs matched to its bpp, and table rows; BD-rates need
    two operating points."""
    logs, job_id, _, _ = validated
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    (log_dir,) = (p for p in copy.iterdir() if (p / "ckpts").is_dir())
    shutil.copytree(log_dir, copy / log_dir.name.replace(job_id, "0101_0000"))
    shutil.copytree(copy / f"{job_id} {DATASET}", copy / f"0101_0000 {DATASET}")
    out = tmp_path / "page.html"
    root, _, images, codecs = validated
    assert cli_main(["report", str(copy), f"{job_id},0101_0000", DATASET, "-o", str(out),
                     "--images", str(images), "--other_codecs_root", str(codecs),
                     "--max_images", "1"]) == 0
    page = out.read_text()
    labels = [label.split(" (q=")[0] + label.partition(")")[2] for label, _ in _panels(page)]
    assert labels == ["Original", f"Ours ({job_id})", f"WEBP @ {job_id}", f"AVIF @ {job_id}",
                      "Ours (0101_0000)", "WEBP @ 0101_0000", "AVIF @ 0101_0000"]
    assert [r[:2] for r in _table(page)["rows"]] == [
        ["img0.png", job_id], ["img1.png", job_id], ["img0.png", "0101_0000"],
        ["img1.png", "0101_0000"]]
    assert "<th>BD-rate (MS-SSIM)</th>" in page and "<th>BD-rate (PSNR [dB])</th>" in page


def test_model_runs_where_val_saved_no_reconstructions(validated, tmp_path, capsys):
    """Without imgs/ the checkpoint that measured measures.csv is run: the same pixels; a
    measures.csv that the reconstruction does not match is named."""
    logs, job_id, _, _ = validated
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    result_dir = copy / f"{job_id} {DATASET}"
    saved = read_image(result_dir / "imgs" / "img1.png")
    shutil.rmtree(result_dir / "imgs")
    out = tmp_path / "page.html"
    assert _report(validated, out, "--codecs", "", logs=copy) == 0
    assert "warning" not in capsys.readouterr().err
    panels = _panels(out.read_text())
    assert [label for label, _ in panels] == ["Original", f"Ours ({job_id})"] * 2
    np.testing.assert_array_equal(panels[3][1], saved)

    text = (result_dir / "measures.csv").read_text().replace("img1.png,", "img1.png,0.5,0.1,1,#")
    (result_dir / "measures.csv").write_text(re.sub(r",#[^\n]*", "", text))
    assert _report(validated, out, "--codecs", "", logs=copy) == 0
    err = capsys.readouterr().err
    assert "img1.png: the reconstruction shown has MS-SSIM" in err
    assert "no measures_<STEP>.csv" in err  # measures.csv no longer equals measures_3.csv


def _chromium() -> str:
    found = report.find_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI: no chromium on PATH (.ci/run installs it)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def test_page_in_browser(validated, tmp_path):
    chromium = _chromium()
    out = tmp_path / "page.html"
    assert _report(validated, out) == 0
    run = report.render_in_browser(out, tmp_path / "shot.png", chromium, (1000, 900))
    assert run.console == []  # no script error, nothing logged
    # The script ran: the table's rows are rendered and sorted by it, the slider's images set.
    dom = run.dom
    assert 'data-ready="1"' in dom
    assert re.search(r'<table id="rows" data-sort-col="0" data-sort-dir="asc">', dom)
    body = re.search(r'<table id="rows".*?<tbody>(.*?)</tbody>', dom, re.S).group(1)
    assert re.findall(r'<a href="#(view-\d)">(img\d\.png)</a>', body) == [
        ("view-0", "img0.png"), ("view-1", "img1.png")]
    assert len(re.findall(r'<img class="over" alt="" src="data:image/png', dom)) == 2
    assert len(re.findall(r'<option value="\d">', dom)) == 2 * 2 * 4  # 2 viewers, 2 selects
    with Image.open(tmp_path / "shot.png") as shot:
        assert shot.size == (1000, 900)
        pixels = np.asarray(shot.convert("L"), dtype=float)
    assert pixels.std() > 20  # not blank: text, plots and images


def test_screenshot_flag(validated, tmp_path, capsys):
    _chromium()
    out, shot = tmp_path / "page.html", tmp_path / "shot.png"
    assert _report(validated, out, "--max_images", "0", "--screenshot", str(shot),
                   "--window", "640,480") == 0
    assert "page console" not in capsys.readouterr().err
    with Image.open(shot) as img:
        assert img.size == (640, 480)


@pytest.mark.parametrize(("change", "message"), [
    ("no_real_bpp", "real_bpp.csv (run val.py"),
    ("no_originals", "originals: img0.png, img1.png not in"),
    ("bad_codec", "--codecs: unknown ['gif']"),
    ("no_job", "job 0101_0101: no results on 'photos'"),
])
def test_errors_are_one_line(validated, tmp_path, capsys, change, message):
    logs, job_id, _, _ = validated
    copy = tmp_path / "logs"
    shutil.copytree(logs, copy)
    out = tmp_path / "page.html"
    args = []
    if change == "no_real_bpp":
        (copy / f"{job_id} {DATASET}" / "real_bpp.csv").unlink()
    elif change == "no_originals":
        args = ["--images", str(tmp_path / "elsewhere")]
        (tmp_path / "elsewhere").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "x.png")
    elif change == "bad_codec":
        args = ["--codecs", "webp,gif"]
    root, _, images, codecs = validated
    rc = cli_main(["report", str(copy), "0101_0101" if change == "no_job" else job_id, DATASET,
                   "-o", str(out), "--images", str(images), "--other_codecs_root", str(codecs),
                   *args])
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists()
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err
