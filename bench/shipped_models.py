"""Kodak results of the models shipped in ckpts/, and the table of ckpts/README.md.

    python val.py ckpts JOB_ID ../shared/data/kodak      # for every shipped job, first
    python bench/shipped_models.py [--write]

Reads each shipped log dir (`ckpts/<JOB> <ae> <pc>/`), its `ckpts/<JOB> kodak/measures.csv`
and its TensorBoard events (steps, training time); prints one line per model and, with
--write, replaces the table in ckpts/README.md.
"""

import argparse
import re
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp.checkpoint import CKPTS_DIRNAME, job_id_of, list_checkpoints
from imgcomp.evaluation import read_measures_csv

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "ckpts"
BEGIN, END = "<!-- models:begin -->", "<!-- models:end -->"


def shipped_log_dirs() -> list[Path]:
    return sorted(p for p in SHIPPED.iterdir() if (p / CKPTS_DIRNAME).is_dir())


def training_hours(log_dir: Path) -> float:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0}).Reload()
    times = [e.wall_time for e in events.Scalars("train/bpp")]
    # Resumed runs leave gaps; count only intervals between logged steps < 10 min apart.
    return sum(b - a for a, b in zip(times, times[1:], strict=False) if b - a < 600) / 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update ckpts/README.md")
    args = parser.parse_args()
    rows = ["| job id | configs | steps | training time | Kodak bpp | Kodak MS-SSIM | "
            "Kodak PSNR |", "|---|---|---|---|---|---|---|"]
    for log_dir in shipped_log_dirs():
        job = job_id_of(log_dir)
        _, ae, pc = log_dir.name.split(" ")
        step = list_checkpoints(log_dir)[-1][0]
        measures = read_measures_csv(SHIPPED / f"{job} kodak" / "measures.csv")
        bpp = np.mean([m.bpp for m in measures])
        msssim = np.mean([m.ms_ssim for m in measures])
        psnr = np.mean([m.psnr for m in measures])
        hours = training_hours(log_dir)
        print(f"{job} {ae} {pc}: step {step}, {hours:.2f} h, Kodak ({len(measures)} images) "
              f"bpp={bpp:.4f} ms-ssim={msssim:.4f} psnr={psnr:.2f}")
        rows.append(f"| {job} | {ae} {pc} | {step} | {hours:.1f} h | {bpp:.4f} | "
                    f"{msssim:.4f} | {psnr:.2f} |")
    if args.write:
        readme = SHIPPED / "README.md"
        text = readme.read_text()
        table = "\n".join([BEGIN, *rows, END])
        readme.write_text(re.sub(f"{BEGIN}.*{END}", table, text, flags=re.S))
        print(f"wrote {readme}")


if __name__ == "__main__":
    main()
