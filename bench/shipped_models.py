"""Results of the models shipped in ckpts/: the table of ckpts/README.md and the results
section of README.md, both rendered from committed CSVs.

    python val.py ckpts JOB_ID ../shared/data/kodak      # for every shipped job, first
    python bench/shipped_models.py [--write]

Reads each shipped log dir (`ckpts/<JOB> <ae> <pc>/`), its `ckpts/<JOB> <DATASET>/measures.csv`
and its TensorBoard events (steps, training time), and the BD-rates plotter.py wrote beside
`figs/plot_<name>.png` (see figs/README.md), and the classical codecs' measures under
results/other_codecs/ (for the MS-SSIM gap at each of our operating points); prints the
models table and the results section and, with --write, replaces them in ckpts/README.md and
README.md.
"""

import argparse
import csv
import re
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp.checkpoint import CKPTS_DIRNAME, job_id_of, list_checkpoints
from imgcomp.measures import MeanMeasures, mean_measures, read_measures_csv
from imgcomp.plotting import PAPER_LABEL, load_codec_curves

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "ckpts"
FIGS = ROOT / "figs"
OTHER_CODECS = ROOT / "results/other_codecs"
MODELS = ("<!-- models:begin -->", "<!-- models:end -->")
RESULTS = ("<!-- results:begin -->", "<!-- results:end -->")
# (dataset name as val.py writes it, label, plot name under figs/)
DATASETS = (("kodak", "Kodak", "plot_Kodak"), ("bsds500_val", "BSDS500 val", "plot_bsds500_val"))


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


def job_means(job: str, dataset: str) -> MeanMeasures | None:
    """Means of a job's committed results, None if absent."""
    path = SHIPPED / f"{job} {dataset}" / "measures.csv"
    if not path.is_file():
        return None
    return mean_measures(read_measures_csv(path))


def models_table() -> list[str]:
    rows = ["| job id | configs | steps | training time | Kodak bpp | Kodak MS-SSIM | "
            "Kodak PSNR |", "|---|---|---|---|---|---|---|"]
    for log_dir in shipped_log_dirs():
        job = job_id_of(log_dir)
        _, ae, pc = log_dir.name.split(" ")
        step = list_checkpoints(log_dir)[-1][0]
        means = job_means(job, "kodak")
        hours = training_hours(log_dir)
        took = f"{hours:.1f} h" if hours >= 1 else f"{60 * hours:.1f} min"
        rows.append(f"| {job} | {ae} {pc} | {step} | {took} | "
                    f"{means.bpp:.4f} | {means.ms_ssim:.4f} | {means.psnr:.2f} |")
    return rows


def read_bd_rates(plot_name: str) -> dict[str, float]:
    path = FIGS / f"{plot_name}_bdrate.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["anchor"]: float(row["bd_rate_percent"]) for row in csv.DictReader(f)}


def results_section() -> list[str]:
    header = "| model | " + " | ".join(f"{label} bpp | {label} MS-SSIM | {label} PSNR"
                                        for _, label, _ in DATASETS) + " |"
    rows = [header, "|---" * (1 + 3 * len(DATASETS)) + "|"]
    by_rate = sorted(shipped_log_dirs(), key=lambda d: job_means(job_id_of(d), "kodak").bpp)
    for log_dir in by_rate:
        job = job_id_of(log_dir)
        cells = [f"{log_dir.name.split(' ')[1]} ({job})"]
        for dataset, _, _ in DATASETS:
            means = job_means(job, dataset)
            cells += (["n/a"] * 3 if means is None else
                      [f"{means.bpp:.4f}", f"{means.ms_ssim:.4f}", f"{means.psnr:.2f}"])
        rows.append("| " + " | ".join(cells) + " |")
    bd = {dataset: read_bd_rates(plot) for dataset, _, plot in DATASETS}
    anchors = list(dict.fromkeys(a for rates in bd.values() for a in rates))
    rows += ["", "| BD-rate of ours (MS-SSIM) against | "
             + " | ".join(label for _, label, _ in DATASETS) + " |",
             "|---" * (1 + len(DATASETS)) + "|"]
    for anchor in anchors:
        # The paper's curve is measured on Kodak: against other datasets it is only a guide.
        cells = [f"{bd[d][anchor]:+.1f} %" if anchor in bd[d] and np.isfinite(bd[d][anchor])
                 else "n/a" for d, _, _ in DATASETS]
        if anchor == PAPER_LABEL:
            cells = [c if d == "kodak" else f"({c} vs its Kodak curve)"
                     for c, (d, _, _) in zip(cells, DATASETS, strict=True)]
        rows.append(f"| {anchor} | " + " | ".join(cells) + " |")
    return rows + ["", *equal_bpp_table(by_rate)]


def equal_bpp_table(by_rate: list[Path]) -> list[str]:
    """Our MS-SSIM minus each codec's at our bpp, its measured curve interpolated linearly:
    what BD-rate, an average over the range, hides about a single operating point."""
    rates = [log_dir.name.split(" ")[1].split("@")[-1] for log_dir in by_rate]
    rows = ["| MS-SSIM of ours minus the codec's at our bpp | "
            + " | ".join(f"{label} {rate}" for _, label, _ in DATASETS for rate in rates)
            + " |", "|---" * (1 + len(DATASETS) * len(rates)) + "|"]
    gaps: dict[str, dict[str, list[str]]] = {}
    for dataset, _, _ in DATASETS:
        ours = [job_means(job_id_of(d), dataset) for d in by_rate]
        for codec in load_codec_curves(OTHER_CODECS, dataset, "ms-ssim"):
            cells = gaps.setdefault(codec.label, {}).setdefault(dataset, [])
            for means in ours:
                if means is None:  # this model not validated on the dataset
                    cells.append("n/a")
                    continue
                theirs = np.interp(means.bpp, codec.bpp, codec.metric, left=np.nan,
                                   right=np.nan)
                cells.append("outside its curve" if np.isnan(theirs)
                             else f"{means.ms_ssim - theirs:+.5f}")
    for codec, by_dataset in gaps.items():
        cells = [c for d, _, _ in DATASETS for c in by_dataset.get(d, ["n/a"] * len(rates))]
        rows.append(f"| {codec} | " + " | ".join(cells) + " |")
    return rows


def replace_between(path: Path, markers: tuple[str, str], rows: list[str]) -> None:
    begin, end = markers
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path} lacks the markers {begin} ... {end}")
    block = "\n".join([begin, *rows, end])
    path.write_text(re.sub(f"{re.escape(begin)}.*{re.escape(end)}", lambda _: block, text,
                           flags=re.S))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="update ckpts/README.md and README.md")
    args = parser.parse_args()
    models, results = models_table(), results_section()
    print("\n".join(models), "", "\n".join(results), sep="\n")
    if args.write:
        replace_between(SHIPPED / "README.md", MODELS, models)
        replace_between(ROOT / "README.md", RESULTS, results)


if __name__ == "__main__":
    main()
