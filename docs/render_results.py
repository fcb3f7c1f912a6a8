"""Renders the results of the models shipped in ckpts/ into the docs, from committed CSVs: the
models table of ckpts/README.md, the headline tables of README.md and the full tables of
docs/results.md.

    python val.py ckpts JOB_ID kodak --real_bpp   # and bsds500_val, each shipped job first
    python docs/render_results.py [--write]

Reads each shipped log dir (`ckpts/<JOB> <ae> <pc>/`), its `ckpts/<JOB> <DATASET>/measures.csv`
(per image: the context model's bpp estimate, MS-SSIM, PSNR) and `real_bpp.csv` (per image:
the real file size, header included, as `bpp_real`), its TensorBoard events (steps, training
time), and the classical codecs' measures under results/other_codecs/ (real file sizes too);
prints every table and, with --write, replaces each between its markers in its file. Our bpp is
the real one wherever we are compared with the codecs: in the BD-rates and in the MS-SSIM gap
at each of our operating points.
"""

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp.base.atomic import atomic_write_text
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import CKPTS_DIRNAME, job_id_of, list_checkpoints
from imgcomp.evaluation.plotting import load_codec_curves
from imgcomp.evaluation.rd_figure import PAPER_LABEL, paper_curve
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    REAL_BPP_CSV,
    Curve,
    MeanMeasures,
    bd_rate_table,
    make_curve,
    mean_measures,
    read_bpp_real,
    read_measures_csv,
    results_dir,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "ckpts"
OTHER_CODECS = ROOT / "results/other_codecs"
# (dataset name as val.py writes it, label)
DATASETS = (("kodak", "Kodak"), ("bsds500_val", "BSDS500 val"))


@dataclass(frozen=True)
class JobResults:
    """A job's committed results on one dataset: the means of measures.csv (bpp: the
    estimate) and the mean of real_bpp.csv's bpp_real over the same images."""

    estimate: MeanMeasures
    bpp_real: float


def shipped_log_dirs() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if (p / CKPTS_DIRNAME).is_dir())


def training_hours(log_dir: Path) -> float:
    """Wall time of the logged steps: within each events file (one per run segment), the
    intervals between train/bpp summaries less than 10 min apart."""
    total = 0.0
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        times = [e.wall_time for e in events.Scalars("train/bpp")]
        total += sum(b - a for a, b in zip(times, times[1:], strict=False) if b - a < 600)
    return total / 3600


def job_results(job: str, dataset: str) -> JobResults | None:
    """A job's committed results, None if it was not validated on the dataset; SystemExit if
    its real file sizes are missing or are not of the same images."""
    folder = results_dir(SHIPPED, job, dataset)
    if not (folder / MEASURES_CSV).is_file():
        return None
    measures = read_measures_csv(folder / MEASURES_CSV)
    if not (folder / REAL_BPP_CSV).is_file():
        raise SystemExit(f"{folder / 'real_bpp.csv'} is missing: "
                         f"python val.py ckpts {job} <{dataset} images> --real_bpp")
    real = read_bpp_real(folder / REAL_BPP_CSV)
    if set(real) != {m.img_name for m in measures}:
        raise SystemExit(f"{folder}: real_bpp.csv and measures.csv are of different images")
    return JobResults(mean_measures(measures), float(np.mean(list(real.values()))))


def models_table() -> list[str]:
    rows = ["| job id | configs | steps | training time | Kodak bpp (real) | "
            "Kodak bpp (estimate) | Kodak MS-SSIM | Kodak PSNR |", "|---" * 8 + "|"]
    for log_dir in shipped_log_dirs():
        job = job_id_of(log_dir)
        _, ae, pc = log_dir.name.split(" ")
        step = list_checkpoints(log_dir)[-1][0]
        kodak = job_results(job, "kodak")
        hours = training_hours(log_dir)
        took = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.1f} min"
        rows.append(f"| {job} | {ae} {pc} | {step} | {took} | {kodak.bpp_real:.4f} | "
                    f"{kodak.estimate.bpp:.4f} | {kodak.estimate.ms_ssim:.4f} | "
                    f"{kodak.estimate.psnr:.2f} |")
    return rows


@dataclass(frozen=True)
class ShippedResults:
    """The shipped models in order of rate, their results on each dataset (None where not
    validated) and the classical codecs' curves."""

    log_dirs: list[Path]
    rates: list[str]  # each model's name in the registry: low, med, hi
    ours: dict[str, list[JobResults | None]]
    codecs: dict[str, list[Curve]]


def shipped_results() -> ShippedResults:
    by_rate = sorted(shipped_log_dirs(), key=lambda d: job_results(job_id_of(d), "kodak").bpp_real)
    names = {row.job_id: row.name for row in zoo.SHIPPED}
    return ShippedResults(
        by_rate, [names[job_id_of(d)] for d in by_rate],
        {dataset: [job_results(job_id_of(d), dataset) for d in by_rate] for dataset, _ in DATASETS},
        {dataset: load_codec_curves(OTHER_CODECS, dataset, "ms-ssim") for dataset, _ in DATASETS})


def measures_table(shipped: ShippedResults, with_estimate: bool) -> list[str]:
    """One row per model: per dataset the real bpp, (the estimate,) MS-SSIM and PSNR."""
    columns = ["bpp (real)", *(["bpp (estimate)"] if with_estimate else []), "MS-SSIM",
               "PSNR (dB)"]
    rows = ["| model | " + " | ".join(f"{label} {column}" for _, label in DATASETS
                                     for column in columns) + " |",
            "|---" * (1 + len(columns) * len(DATASETS)) + "|"]
    for i, (log_dir, rate) in enumerate(zip(shipped.log_dirs, shipped.rates, strict=True)):
        cells = [f"{rate} ({log_dir.name.split(' ')[1]}, {job_id_of(log_dir)})"]
        for dataset, _ in DATASETS:
            results = shipped.ours[dataset][i]
            if results is None:
                cells += ["n/a"] * len(columns)
                continue
            cells += [f"{results.bpp_real:.4f}",
                      *([f"{results.estimate.bpp:.4f}"] if with_estimate else []),
                      f"{results.estimate.ms_ssim:.4f}", f"{results.estimate.psnr:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def headline_section() -> list[str]:
    """README.md: each model's real bpp, MS-SSIM and PSNR, and the BD-rates."""
    shipped = shipped_results()
    return [*measures_table(shipped, with_estimate=False), "", *bd_rate_rows(shipped)]


def results_section() -> list[str]:
    """docs/results.md: the estimate too, the BD-rates, and the gaps at equal bpp."""
    shipped = shipped_results()
    return [*measures_table(shipped, with_estimate=True), "", *bd_rate_rows(shipped), "",
            *equal_bpp_rows(shipped)]


def bd_rate_rows(shipped: ShippedResults) -> list[str]:
    """BD-rate (MS-SSIM) of our real-size curve against each codec's and the paper's."""
    bd: dict[str, dict[str, float]] = {}
    for dataset, _ in DATASETS:
        points = [(r, rate) for r, rate in zip(shipped.ours[dataset], shipped.rates, strict=True)
                  if r]
        curve = make_curve("Ours", [r.bpp_real for r, _ in points],
                           [r.estimate.ms_ssim for r, _ in points], [rate for _, rate in points])
        for row in bd_rate_table(curve, [*shipped.codecs[dataset], paper_curve()], "ms-ssim"):
            bd.setdefault(row.anchor, {})[dataset] = row.bd_rate_percent
    rows = ["| BD-rate of ours (MS-SSIM, real file sizes) against | "
            + " | ".join(label for _, label in DATASETS) + " |", "|---" * (1 + len(DATASETS)) + "|"]
    for anchor, by_dataset in bd.items():
        cells = [f"{by_dataset[d]:+.1f} %" if np.isfinite(by_dataset.get(d, np.nan)) else "n/a"
                 for d, _ in DATASETS]
        if anchor == PAPER_LABEL:
            # The paper's curve is measured on Kodak: against other datasets only a guide.
            cells = [c if d == "kodak" else f"({c} vs its Kodak curve)"
                     for c, (d, _) in zip(cells, DATASETS, strict=True)]
        rows.append(f"| {anchor} | " + " | ".join(cells) + " |")
    return rows


def equal_bpp_rows(shipped: ShippedResults) -> list[str]:
    """Our MS-SSIM minus each codec's at our real bpp, its measured curve interpolated
    linearly: what BD-rate, an average over the range, hides about a single operating point."""
    rows = ["| MS-SSIM of ours minus the codec's at our real bpp | "
            + " | ".join(f"{label} {rate}" for _, label in DATASETS for rate in shipped.rates)
            + " |", "|---" * (1 + len(DATASETS) * len(shipped.rates)) + "|"]
    gaps: dict[str, dict[str, list[str]]] = {}
    for dataset, _ in DATASETS:
        for codec in shipped.codecs[dataset]:
            cells = gaps.setdefault(codec.label, {}).setdefault(dataset, [])
            for results in shipped.ours[dataset]:
                if results is None:  # this model not validated on the dataset
                    cells.append("n/a")
                    continue
                theirs = np.interp(results.bpp_real, codec.bpp, codec.metric, left=np.nan,
                                   right=np.nan)
                cells.append("outside its curve" if np.isnan(theirs)
                             else f"{results.estimate.ms_ssim - theirs:+.5f}")
    for codec, by_dataset in gaps.items():
        cells = [c for d, _ in DATASETS
                 for c in by_dataset.get(d, ["n/a"] * len(shipped.rates))]
        rows.append(f"| {codec} | " + " | ".join(cells) + " |")
    return rows


def replace_between(path: Path, markers: tuple[str, str], rows: list[str]) -> None:
    begin, end = markers
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}")
    block = "\n".join([begin, *rows, end])
    atomic_write_text(path, re.sub(f"{re.escape(begin)}.*{re.escape(end)}", lambda _: block,
                                   text, flags=re.S))
    print(f"wrote {path}")


# Each rendered section: the file it lives in, its markers, what renders it.
SECTIONS = (
    (SHIPPED / "README.md", ("<!-- models:begin -->", "<!-- models:end -->"), models_table),
    (ROOT / "README.md", ("<!-- headline:begin -->", "<!-- headline:end -->"), headline_section),
    (ROOT / "docs/results.md", ("<!-- results:begin -->", "<!-- results:end -->"),
     results_section),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="replace the sections in ckpts/README.md, README.md and "
                             "docs/results.md")
    args = parser.parse_args()
    for path, markers, render in SECTIONS:
        rows = render()
        print(f"{path.relative_to(ROOT)}:", *rows, "", sep="\n")
        if args.write:
            replace_between(path, markers, rows)


if __name__ == "__main__":
    main()
