"""The models shipped in ckpts/: they load, code real photos, their Kodak numbers in
ckpts/README.md (estimated and real bpp) are what val.py --real_bpp measures, and the results
in README.md, docs/results.md, ckpts/README.md and figs/ are what plotter.py and
docs/render_results.py compute from the committed measures and real file sizes."""

import csv
import os
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcomp.api import load_model
from imgcomp.base.image_files import sample_photos
from imgcomp.checkpoints.log_dirs import AE_CONFIG_NAME, CKPTS_DIRNAME, PC_CONFIG_NAME, job_id_of
from imgcomp.config.parsing import load_config
from imgcomp.evaluation import plotting, validation
from imgcomp.evaluation.results import read_measures_csv

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "ckpts").iterdir() if (p / CKPTS_DIRNAME).is_dir())
KODAK = Path(os.environ.get("IMGCOMP_SHARED", ROOT.parent / "shared")) / "data/kodak"


def test_some_models_ship():
    assert SHIPPED, "no log dirs in ckpts/"
    for log_dir in SHIPPED:
        size = sum(f.stat().st_size for f in log_dir.rglob("*") if f.is_file())
        assert size <= 20 * 2**20, f"{log_dir.name} is {size / 2**20:.1f} MB"


@pytest.mark.parametrize("log_dir", SHIPPED, ids=lambda p: p.name)
def test_shipped_model_codes_a_real_photo(log_dir):
    model = load_model(log_dir)
    photo = np.asarray(Image.open(sample_photos()[0]).convert("RGB"))[100:228, 150:310]
    data = model.compress(photo)
    decoded = model.decompress(data)
    symbols = model.symbols(photo)  # what val.py measures
    expected, bits = model.reconstruct(symbols, *photo.shape[:2]), model.bits(symbols)
    assert np.array_equal(decoded, expected)
    assert 8 * len(data) == pytest.approx(bits, rel=0.05, abs=400)


# Keys the configs changed after the shipped models were trained (docs/faithfulness.md, "Which
# choices train better"): repo value, the shipped models' value.
CHANGED_SINCE_SHIPPED = {"bottleneck_output_bn": (True, False)}
# Keys added since, with the value the shipped models were trained with (LEGACY_PC_KEYS).
ADDED_SINCE_SHIPPED = {"arch_param__num_res_blocks": 1}


@pytest.mark.parametrize("log_dir", SHIPPED, ids=lambda p: p.name)
def test_repo_configs_are_the_ones_a_shipped_model_was_trained_with(log_dir):
    # ckpts/README.md reproduces each model from the configs its log dir is named after, but
    # for the keys changed since, which its flattened configs hold.
    _, ae, pc = log_dir.name.split(" ")
    for root, job_name, flattened in (("ae_configs", ae, AE_CONFIG_NAME),
                                      ("pc_configs", pc, PC_CONFIG_NAME)):
        in_repo = dict(load_config(ROOT / root / Path(*job_name.split("@"))).items())
        shipped = dict(load_config(log_dir / CKPTS_DIRNAME / flattened).items())
        for key, values in CHANGED_SINCE_SHIPPED.items():
            if key in in_repo:
                assert (in_repo.pop(key), shipped.pop(key)) == values, key
        for key, value in ADDED_SINCE_SHIPPED.items():
            if key in in_repo and key not in shipped:
                assert in_repo.pop(key) == value, key
        assert in_repo == shipped, f"{root}/{job_name}"


def _read_bpp_real(path: Path) -> dict[str, str]:
    """img_name -> bpp_real of a real_bpp.csv, as written (real file sizes are exact)."""
    with open(path, newline="") as f:
        return {row["img_name"]: row["bpp_real"] for row in csv.DictReader(f)}


@pytest.mark.parametrize("log_dir", SHIPPED, ids=lambda p: p.name)
def test_readme_numbers_match_a_fresh_val_run(log_dir, tmp_path):
    job = job_id_of(log_dir)
    committed = read_measures_csv(ROOT / "ckpts" / f"{job} kodak" / "measures.csv")
    committed_real = _read_bpp_real(ROOT / "ckpts" / f"{job} kodak" / "real_bpp.csv")
    assert len(committed) == 24
    assert set(committed_real) == {m.img_name for m in committed}
    readme = (ROOT / "ckpts/README.md").read_text()
    row = re.search(rf"^\| {job} \|.*$", readme, re.M)
    assert row, f"{job} is not in ckpts/README.md"
    bpp_real, bpp, msssim, psnr = (float(v) for v in row.group(0).split("|")[5:9])
    assert bpp_real == pytest.approx(np.mean([float(v) for v in committed_real.values()]),
                                     abs=1e-4)
    assert bpp == pytest.approx(np.mean([m.bpp for m in committed]), abs=1e-4)
    assert msssim == pytest.approx(np.mean([m.ms_ssim for m in committed]), abs=1e-4)
    assert psnr == pytest.approx(np.mean([m.psnr for m in committed]), abs=1e-2)
    if not (KODAK / "kodim01.png").is_file():
        pytest.skip("Kodak images not available (set IMGCOMP_SHARED)")
    # A fresh val.py run on 2 images gives the committed per-image numbers, and files of
    # exactly the committed sizes.
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / log_dir.name).symlink_to(log_dir)
    images = tmp_path / "kodak"
    images.mkdir()
    for name in ("kodim01.png", "kodim02.png"):
        (images / name).symlink_to(KODAK / name)
    assert validation.main([str(tmp_path / "logs"), job, str(images), "--device", "cpu",
                            "--real_bpp"]) == 0
    fresh = read_measures_csv(tmp_path / "logs" / f"{job} kodak" / "measures.csv")
    by_name = {m.img_name: m for m in committed}
    for m in fresh:
        assert m.bpp == pytest.approx(by_name[m.img_name].bpp, rel=1e-3)
        assert m.ms_ssim == pytest.approx(by_name[m.img_name].ms_ssim, abs=1e-3)
        assert m.psnr == pytest.approx(by_name[m.img_name].psnr, abs=0.05)
    fresh_real = _read_bpp_real(tmp_path / "logs" / f"{job} kodak" / "real_bpp.csv")
    assert fresh_real == {name: committed_real[name] for name in fresh_real}
    assert len(fresh_real) == 2


PLOTS = [("kodak", "plot_Kodak"), ("bsds500_val", "plot_bsds500_val")]


def _read_bd_csv(path: Path) -> dict[str, tuple[float, str]]:
    with open(path, newline="") as f:
        return {r["anchor"]: (float(r["bd_rate_percent"]), r["note"]) for r in csv.DictReader(f)}


@pytest.mark.parametrize("dataset,plot", PLOTS)
def test_committed_bd_rates_are_what_plotter_computes(dataset, plot, tmp_path):
    jobs = ",".join(job_id_of(d) for d in SHIPPED)
    out = tmp_path / f"{plot}.png"
    assert plotting.main([str(ROOT / "ckpts"), jobs, dataset, "--other_codecs_root",
                          str(ROOT / "results/other_codecs"), "-o", str(out), "--style", "mean",
                          "--paper_plot"]) == 0
    fresh = _read_bd_csv(tmp_path / f"{plot}_bdrate.csv")
    committed = _read_bd_csv(ROOT / "figs" / f"{plot}_bdrate.csv")
    assert set(fresh) == set(committed) >= {"jpeg", "webp", "jp2k", "avif"}
    for anchor, (value, note) in committed.items():
        assert fresh[anchor][0] == pytest.approx(value, abs=1e-3, nan_ok=True), anchor
        assert fresh[anchor][1] == note
    assert (ROOT / "figs" / f"{plot}.png").is_file()


RENDER = runpy.run_path(str(ROOT / "docs/render_results.py"))


@pytest.mark.parametrize("path,markers,render", RENDER["SECTIONS"],
                         ids=[str(path.relative_to(ROOT)) for path, _, _ in RENDER["SECTIONS"]])
def test_results_tables_are_rendered_from_committed_csvs(path, markers, render):
    rows = render()
    begin, end = markers
    text = path.read_text()
    assert text.count(begin) == text.count(end) == 1, f"{path}: its markers"
    assert text.split(begin, 1)[1].split(end, 1)[0].strip("\n") == "\n".join(rows)
    assert not any("n/a" in row for row in rows)
