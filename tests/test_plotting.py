"""plotter.py: curves from fake measures.csv files, the plot, BD-rates and the CLI's errors."""

import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.evaluation import baselines, plotting, rd_figure
from imgcomp.evaluation import results as measures
from imgcomp.evaluation.results import Measure, read_measures_csv, write_measures_csv
from imgcomp.evaluation.validation import REAL_BPP_HEADER

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("0101_0001", "0101_0002", "0101_0003")
JOB_BPP = (0.2, 0.45, 0.9)
CODEC_BPP = (0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.2)
# Per image: rate scale and quality offset, so images differ but the means stay simple.
IMAGES = (("a.png", 0.8, -0.004), ("b.png", 0.9, 0.001), ("c.png", 1.1, 0.002),
          ("d.png", 1.2, 0.001))
# Bits needed relative to ours for the same quality: jpeg 2x (ours -50 %), avif 0.8x (+25 %).
CODEC_RATE_FACTOR = {"jpeg": 2.0, "avif": 0.8}


def _quality(b: float) -> tuple[float, float]:
    """(MS-SSIM, PSNR) reached at nominal rate b: increasing, saturating."""
    return 1 - 0.06 * math.exp(-3 * b), 25 + 8 * math.log2(1 + 4 * b)


def _measures(b: float, rate_factor: float) -> list[Measure]:
    ms_ssim, psnr = _quality(b)
    return [Measure(name, b * scale * rate_factor, ms_ssim + off, psnr + 100 * off)
            for name, scale, off in IMAGES]


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, Path]:
    """(LOG_DIR_ROOT with 3 jobs on 'kodak' and one training dir, OTHER_CODECS_ROOT)."""
    logs, codecs = tmp_path / "logs", tmp_path / "other_codecs"
    for job, b in zip(JOBS, JOB_BPP, strict=True):
        write_measures_csv(logs / f"{job} kodak" / "measures.csv", _measures(b, 1.0))
        (logs / f"{job} cvpr@low cvpr@res_shallow" / "ckpts").mkdir(parents=True)
    for codec, factor in CODEC_RATE_FACTOR.items():
        for i, b in enumerate(CODEC_BPP):
            write_measures_csv(codecs / "kodak" / codec / f"q{i * 10}" / "measures.csv",
                               _measures(b, factor))
    return logs, codecs


def _run(results: tuple[Path, Path], tmp_path: Path, *extra: str,
         jobs: str = ",".join(JOBS)) -> tuple[int, Path]:
    logs, codecs = results
    out = tmp_path / "out" / "plot.png"
    rc = plotting.main([str(logs), jobs, "kodak", "--other_codecs_root", str(codecs),
                        "-o", str(out), *extra])
    return rc, out


def _bd_rows(plot: Path) -> dict[str, dict[str, str]]:
    with open(plot.with_name(plot.stem + "_bdrate.csv"), newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == measures.BD_CSV_HEADER
        return {row["anchor"]: row for row in reader}


def test_interp_curve_is_exact_mean_of_linear_curves():
    # Two images with linear curves over different bpp ranges: common range 0.3..1.0.
    img1 = ([0.2, 0.6, 1.0], [0.9 + 0.05 * b for b in (0.2, 0.6, 1.0)])
    img2 = ([1.1, 0.3, 0.7], [0.8 + 0.1 * b for b in (1.1, 0.3, 0.7)])  # unsorted on purpose
    x, y = plotting.interp_curve([img1, img2], num=8)
    np.testing.assert_allclose(x, np.linspace(0.3, 1.0, 8))
    np.testing.assert_allclose(y, 0.85 + 0.075 * x, atol=1e-12)


def test_interp_curve_without_common_range_raises():
    with pytest.raises(ValueError, match="no common part"):
        plotting.interp_curve([([0.1, 0.2], [0.9, 0.95]), ([0.3, 0.4], [0.9, 0.95])])
    with pytest.raises(ValueError, match="no image"):
        plotting.interp_curve([])


def test_interp_and_mean_styles_agree_on_our_curve(results):
    logs, _ = results
    jobs = [plotting.load_job_measures(logs, j, "kodak") for j in JOBS]
    points = plotting.job_points(jobs, ["A", "B", "C"], "ms-ssim")
    np.testing.assert_allclose(points.bpp, JOB_BPP, atol=1e-5)  # mean image scale is 1
    np.testing.assert_allclose(points.metric, [_quality(b)[0] for b in JOB_BPP], atol=1e-5)
    assert points.point_labels == ("A", "B", "C")
    mean_line, style = plotting.our_line(jobs, points, "ms-ssim", "mean")
    assert style == "mean" and mean_line is points
    line, style = plotting.our_line(jobs, points, "ms-ssim", "interp")
    assert style == "interp"
    # Common range: the largest image's lowest bpp to the smallest image's highest bpp.
    assert line.bpp[0] == pytest.approx(0.2 * 1.2, abs=1e-5)
    assert line.bpp[-1] == pytest.approx(0.9 * 0.8, abs=1e-5)
    assert np.all(np.diff(line.metric) > 0)
    assert points.metric[0] < line.metric[0] and line.metric[-1] < points.metric[-1]


def test_plot_and_bd_rates(results, tmp_path, capsys):
    rc, out = _run(results, tmp_path, "--ids", "A", "B", "C", "--paper_plot")
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        w, h = rd_figure.NORMAL_FIGSIZE
        assert img.size == (w * rd_figure.NORMAL_DPI, h * rd_figure.NORMAL_DPI)
    rows = _bd_rows(out)
    assert list(rows) == ["avif", "jpeg", rd_figure.PAPER_LABEL]
    assert all(r["metric"] == "ms-ssim" for r in rows.values())
    assert -55 < float(rows["jpeg"]["bd_rate_percent"]) < -45  # jpeg needs twice our bits
    assert 20 < float(rows["avif"]["bd_rate_percent"]) < 30  # avif needs 0.8x our bits
    assert math.isfinite(float(rows[rd_figure.PAPER_LABEL]["bd_rate_percent"]))
    printed = capsys.readouterr().out
    assert "A (0101_0001): 4 images" in printed and "jpeg" in printed


def test_non_monotone_points_warn(results, tmp_path, capsys):
    logs, _ = results
    # A fourth job with more bits than C but lower quality than B.
    write_measures_csv(logs / "0101_0004 kodak" / "measures.csv", [
        Measure(name, 1.5, _quality(JOB_BPP[1])[0] - 0.001, 30.0) for name, _, _ in IMAGES])
    rc, _ = _run(results, tmp_path, "--ids", "A", "B", "C", "D",
                 jobs=",".join([*JOBS, "0101_0004"]))
    assert rc == 0
    err = capsys.readouterr().err
    assert "our points are not monotone: at D the ms-ssim is no higher" in err
    rc, _ = _run(results, tmp_path)
    assert "not monotone" not in capsys.readouterr().err


def test_interp_style_end_to_end_and_single_job_fallback(results, tmp_path, capsys):
    rc, out = _run(results, tmp_path, "--style", "interp")
    assert rc == 0 and out.stat().st_size > 0
    rc, out = _run(results, tmp_path, "--style", "interp", jobs=JOBS[0])
    assert rc == 0 and out.stat().st_size > 0
    assert "--style interp needs >= 2 jobs" in capsys.readouterr().err
    # One operating point: BD-rate is NaN with the reason, not a crash.
    row = _bd_rows(out)["jpeg"]
    assert math.isnan(float(row["bd_rate_percent"])) and "too few" in row["note"]


def test_bd_rate_without_overlap_is_nan():
    ours = measures.make_curve("ours", [0.2, 0.5], [0.97, 0.99])
    codec = measures.make_curve("codec", [0.2, 0.5], [0.90, 0.93])
    value, note, n_anchor, n_ours = measures.bd_rate(codec, ours, "ms-ssim")
    assert math.isnan(value) and "no overlap" in note and (n_anchor, n_ours) == (2, 2)


def test_psnr_metric(results, tmp_path):
    rc, out = _run(results, tmp_path, "--metric", "psnr", "--codecs", "jpeg")
    assert rc == 0 and out.stat().st_size > 0
    rows = _bd_rows(out)
    assert list(rows) == ["jpeg"]  # no paper curve for PSNR; avif not asked for
    assert rows["jpeg"]["metric"] == "psnr"
    assert -55 < float(rows["jpeg"]["bd_rate_percent"]) < -45


def test_paper_figure_pdf(results, tmp_path):
    logs, codecs = results
    out = tmp_path / "fig.pdf"
    assert plotting.main([str(logs), ",".join(JOBS), "kodak", "--paper_figure", "-o", str(out),
                          "--other_codecs_root", str(codecs), "--x_range", "0,1.2"]) == 0
    assert out.read_bytes()[:5] == b"%PDF-"
    assert (tmp_path / "fig_bdrate.csv").is_file()


def test_missing_codecs_root_warns(results, tmp_path, capsys, monkeypatch):
    logs, _ = results
    monkeypatch.delenv("OTHER_CODECS_ROOT", raising=False)
    out = tmp_path / "p.png"
    assert plotting.main([str(logs), ",".join(JOBS), "kodak", "--other_codecs_root",
                          str(tmp_path / "nowhere"), "-o", str(out)]) == 0
    assert "no classical codec results" in capsys.readouterr().err
    assert list(_bd_rows(out)) == []  # no codecs, and the paper's curve only with --paper_plot


def test_latex_without_binary_warns_and_plots(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    rc, out = _run(results, tmp_path, "--latex")
    assert rc == 0 and out.stat().st_size > 0
    assert "--latex: no latex binary found" in capsys.readouterr().err


def test_latex_failing_falls_back(results, tmp_path, capsys, monkeypatch):
    # A latex that is "found" but cannot run: the plot is redrawn without LaTeX.
    monkeypatch.setattr(shutil, "which", lambda name: "/nonexistent/latex")
    monkeypatch.setenv("PATH", str(tmp_path / "empty_path"))
    rc, out = _run(results, tmp_path, "--latex")
    assert rc == 0 and out.stat().st_size > 0
    assert "rendering with LaTeX failed" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (("--ids", "A", "B", "C", "D"), "--ids gives 4 label(s) for 3 job(s)"),
    (("--x_range", "0;1"), "--x_range '0;1'"),
    (("--y_range", "1,0.5"), "--y_range '1,0.5'"),
])
def test_argument_errors(results, tmp_path, capsys, extra, message):
    rc, _ = _run(results, tmp_path, *extra)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and message in err


def test_unknown_job_names_expected_path(results, tmp_path, capsys):
    logs, _ = results
    write_measures_csv(logs / "0101_0001 clic" / "measures.csv", _measures(0.3, 1.0))
    rc, _ = _run(results, tmp_path, jobs="0101_0001,0202_0202")
    err = capsys.readouterr().err
    assert rc == 1 and str(logs / "0202_0202 kodak" / "measures.csv") in err
    assert "no dataset" in err
    assert plotting.main([str(logs), "0101_0001", "div2k"]) == 1
    err = capsys.readouterr().err
    assert "results of this job exist for: clic, kodak" in err


def test_malformed_csv(results, tmp_path, capsys):
    logs, _ = results
    (logs / f"{JOBS[1]} kodak" / "measures.csv").write_text("img_name,bpp,ms-ssim,psnr\nx,1\n")
    rc, _ = _run(results, tmp_path)
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "malformed" in err


def test_script_reports_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "plotter.py"), str(tmp_path / "missing"),
                           "0101_0001", "kodak"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: LOG_DIR_ROOT {tmp_path / 'missing'} is not a directory"]


def test_original_defaults_end_to_end(results, tmp_path, monkeypatch, capsys):
    """No -o: plot_Kodak.png in the working directory, as the original; --style interp; the
    paper's curve only with --paper_plot; x axis 0..1.2."""
    logs, codecs = results
    monkeypatch.chdir(tmp_path)
    args = [str(logs), ",".join(JOBS), "kodak", "--other_codecs_root", str(codecs)]
    assert plotting.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote plot_Kodak.png" in out and (tmp_path / "plot_Kodak.png").is_file()
    assert list(_bd_rows(tmp_path / "plot_Kodak.png")) == ["avif", "jpeg"]
    assert plotting.main([*args, "--paper_plot", "--style", "interp", "mean",
                          "--output_path", "both.png"]) == 0
    assert list(_bd_rows(tmp_path / "both.png")) == ["avif", "jpeg", rd_figure.PAPER_LABEL]


def test_what_each_style_draws(results, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plotting, "plot_rd", lambda path, line, points, *a, **kw: drawn.append(
        (line, points, kw["show_points"], kw["x_range"], kw["y_range"])))
    for style in (["interp"], ["mean"], ["interp", "mean"]):
        assert _run(results, tmp_path, "--style", *style)[0] == 0
    (interp, points, show1, x_range, y_range), (mean, _, show2, _, _), (both, _, show3, _, _) = (
        drawn)
    assert (show1, show2, show3) == (False, True, True)  # points only with 'mean'
    assert len(interp.bpp) == plotting.INTERP_GRID_POINTS and both.bpp is not points.bpp
    assert mean is not interp and np.array_equal(mean.bpp, points.bpp)
    assert x_range == (0.0, 1.2) and y_range == (0.85, 1.0)


def test_ids_job_groups_and_points_outside(results, tmp_path, capsys):
    rc, _ = _run(results, tmp_path, "--ids", "A")  # fewer labels: the rest keep job ids
    out = capsys.readouterr().out
    assert rc == 0 and "A (0101_0001)" in out and "0101_0002 (0101_0002)" in out
    rc, _ = _run(results, tmp_path, jobs=f"{JOBS[0]},{JOBS[1]};{JOBS[2]}")
    assert rc == 1 and "';'" in capsys.readouterr().err
    rc, _ = _run(results, tmp_path, "--x_range", "0,0.5", "--style", "mean")
    err = capsys.readouterr().err
    assert rc == 0 and "0101_0003 (0.900 bpp" in err and "outside the plot" in err
    rc, _ = _run(results, tmp_path, "--metric", "psnr", "--paper_plot")
    assert rc == 0 and "MS-SSIM only" in capsys.readouterr().err


def _write_real_bpp(logs: Path, job: str, factor: float, skip: str | None = None) -> None:
    """real_bpp.csv as val.py --real_bpp writes it: each image's real bpp = factor x its
    estimate."""
    estimate = read_measures_csv(logs / f"{job} kodak" / "measures.csv")
    with open(logs / f"{job} kodak" / "real_bpp.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REAL_BPP_HEADER)
        for m in estimate:
            if m.img_name != skip:
                writer.writerow([m.img_name, m.bpp * factor, m.bpp, m.bpp, 1.0, 1.0])


def test_real_bpp(results, tmp_path, capsys, monkeypatch):
    """--real_bpp: our points, the plot and the BD-rates use real_bpp.csv's sizes."""
    logs, _ = results
    for job in JOBS:
        _write_real_bpp(logs, job, 1.1)
    drawn = []
    monkeypatch.setattr(plotting, "plot_rd", lambda path, line, points, *a, **kw: drawn.append(
        (points, kw["x_label"])))
    rc, out = _run(results, tmp_path, "--real_bpp", "--style", "mean")
    assert rc == 0
    points, x_label = drawn[0]
    np.testing.assert_allclose(points.bpp, np.array(JOB_BPP) * 1.1, atol=1e-5)
    assert x_label == rd_figure.REAL_BPP_LABEL
    assert "0101_0001 (0101_0001): 4 images, real bpp 0.2200" in capsys.readouterr().out
    # jpeg needs 2x our estimated bits, so 2 / 1.1 x our real ones: BD-rate 1.1 / 2 - 1.
    assert -47 < float(_bd_rows(out)["jpeg"]["bd_rate_percent"]) < -43
    rc, out = _run(results, tmp_path)  # without the flag: the estimate, as before
    assert -55 < float(_bd_rows(out)["jpeg"]["bd_rate_percent"]) < -45


def test_real_bpp_missing_or_incomplete(results, tmp_path, capsys):
    logs, _ = results
    _write_real_bpp(logs, JOBS[0], 1.0)
    rc, _ = _run(results, tmp_path, "--real_bpp")
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: job 0101_0002: no real file sizes, expected ")
    assert str(logs / "0101_0002 kodak" / "real_bpp.csv") in err and "--real_bpp" in err
    for job in JOBS[1:]:
        _write_real_bpp(logs, job, 1.0, skip="c.png" if job == JOBS[2] else None)
    rc, _ = _run(results, tmp_path, "--real_bpp")
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "real_bpp.csv: no real bpp of 1 image(s) of measures.csv (c.png)" in err


def test_codec_results_found_where_they_are(results, tmp_path, capsys, monkeypatch):
    """Without --other_codecs_root and $OTHER_CODECS_ROOT: ./other_codecs/DATASET if there, else
    the committed results/other_codecs; where neither has it, the warning names both."""
    logs, codecs = results
    monkeypatch.delenv("OTHER_CODECS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert baselines.COMMITTED_RESULTS_ROOT == ROOT / "results" / "other_codecs"
    assert baselines.results_roots_to_read() == [Path("other_codecs"),
                                                 baselines.COMMITTED_RESULTS_ROOT]
    assert baselines.results_roots_to_read("x") == [Path("x")]
    args = [str(logs), ",".join(JOBS), "kodak"]
    shutil.move(codecs, tmp_path / "elsewhere")  # no ./other_codecs: the committed ones
    assert plotting.main([*args, "-o", "committed.png"]) == 0
    assert f"classical codecs: {ROOT / 'results' / 'other_codecs' / 'kodak'}" in (
        capsys.readouterr().out)
    assert list(_bd_rows(tmp_path / "committed.png")) == ["avif", "jp2k", "jpeg", "webp"]
    shutil.move(tmp_path / "elsewhere", tmp_path / "other_codecs")  # ./other_codecs first
    assert plotting.main([*args, "-o", "local.png"]) == 0
    assert "classical codecs: other_codecs/kodak" in capsys.readouterr().out
    assert list(_bd_rows(tmp_path / "local.png")) == ["avif", "jpeg"]
    for job in JOBS:  # a dataset with no codec results anywhere
        shutil.copytree(logs / f"{job} kodak", logs / f"{job} clic")
    assert plotting.main([str(logs), ",".join(JOBS), "clic", "-o", "none.png"]) == 0
    err = capsys.readouterr().err
    assert (f"no classical codec results for 'clic' in other_codecs/clic nor "
            f"{ROOT / 'results' / 'other_codecs' / 'clic'}") in err


def test_default_ranges_fit_a_young_model(results, tmp_path, capsys, monkeypatch):
    """No --x_range / --y_range: the original's 0..1.2 and 0.85..1 widened to show every point
    of ours; given ranges are kept, with a warning naming the points left out."""
    logs, _ = results
    write_measures_csv(logs / "0101_0009 kodak" / "measures.csv", [
        Measure(name, 2.5, 0.7, 20.0) for name, _, _ in IMAGES])
    drawn = []
    monkeypatch.setattr(plotting, "plot_rd", lambda path, line, points, *a, **kw: drawn.append(
        (kw["x_range"], kw["y_range"])))
    jobs = f"{JOBS[0]},0101_0009"
    rc, _ = _run(results, tmp_path, "--style", "mean", jobs=jobs)
    out, err = capsys.readouterr()
    assert rc == 0 and "outside the plot" not in err
    # 2.5 bpp + 8 %, up to a multiple of 0.1; 0.7 less 8 % of 0.3, down to a multiple of 0.05.
    assert drawn[-1] == ((0.0, 2.7), (0.65, 1.0))
    assert "bpp axis widened to 0..2.7" in out and "MS-SSIM axis widened to 0.65..1" in out
    rc, _ = _run(results, tmp_path, "--style", "mean", "--x_range", "0,1.2", "--y_range",
                 "0.85,1", jobs=jobs)
    assert rc == 0 and drawn[-1] == ((0.0, 1.2), (0.85, 1.0))
    assert "0101_0009 (2.500 bpp, 0.7) lie outside the plot" in capsys.readouterr().err
