"""`imgcomp report`: one self-contained HTML page about validated jobs on a dataset.

    imgcomp report LOG_DIR_ROOT JOB_IDS DATASET -o PAGE.html [--images SPEC] [--max_images N]
                   [--codecs webp,avif] [--other_codecs_root DIR] [--screenshot PNG]

The page holds the rate-distortion plots (MS-SSIM and PSNR against the real bpp of
real_bpp.csv, beside the classical codecs' curves, as `plotter.py --real_bpp` draws them), the
BD-rates, a sortable table of every image, and for the first --max_images images a viewer:
the original, ours and each codec at the setting whose real file size is closest to ours, side
by side with a shared zoom and pan, and any two of them under a before/after slider. Plots are
SVG and images PNG, as data URIs; the script is inline: the page opens from disk, with no
server and no network.

Ours in the viewer: the reconstructions val.py saved in `<JOB> <DATASET>/imgs/` (--save_ours)
if there, else the checkpoint that measured measures.csv is run on the original. It runs the
autoencoder only: val.py checked that the real file decodes to the same symbols, so decoding
the file again (seconds per image) would give the same pixels. The MS-SSIM of each
reconstruction is checked against measures.csv. The codecs are Pillow's, encoded on the fly.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from imgcomp.base.atomic import atomic_path, atomic_write_text
from imgcomp.base.image_files import DatasetError, ImageReadError, read_image, resolve_images
from imgcomp.checkpoints import log_dirs
from imgcomp.config.parsing import ConfigError
from imgcomp.evaluation.baselines import CODECS
from imgcomp.evaluation.crop_figure import Panel, codec_panels
from imgcomp.evaluation.plotting import (
    PlotError,
    find_codec_results,
    job_points,
    job_results_path,
    load_codec_curves,
    load_job_measures,
)
from imgcomp.evaluation.rd_figure import paper_curve
from imgcomp.evaluation.report_page import (
    Viewer,
    comparison_html,
    page_html,
    rd_plot_uri,
)

if TYPE_CHECKING:
    from imgcomp.codec.image_codec import ImageCodec
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    METRIC_ATTRS,
    RECONSTRUCTIONS_DIR,
    Measure,
    measure,
)

DEFAULT_CODECS = ("webp", "avif")
DEFAULT_MAX_IMAGES = 4
# Our reconstruction's MS-SSIM may differ from measures.csv's by float noise (another device);
# more means it is not what was measured (another checkpoint, edited files).
MS_SSIM_TOLERANCE = 1e-3
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DEFAULT_WINDOW = (1280, 1600)
BROWSER_TIMEOUT_S = 120


class ReportError(Exception):
    """A problem with the inputs; main prints it as one `error:` line."""


def warn(msg: str) -> None:
    tqdm.write(f"warning: {msg}", file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class Job:
    """One validated job: its measures with the estimated and with the real bpp (same order)."""

    job_id: str
    result_dir: Path
    estimate: list[Measure]
    real: list[Measure]


def load_job(log_dir_root: Path, job_id: str, dataset: str) -> Job:
    try:
        return Job(job_id, job_results_path(log_dir_root, job_id, dataset).parent,
                   load_job_measures(log_dir_root, job_id, dataset),
                   load_job_measures(log_dir_root, job_id, dataset, real_bpp=True))
    except PlotError as e:
        raise ReportError(str(e)) from e


def validated_step(result_dir: Path) -> int | None:
    """The checkpoint step that measures.csv is of: the one whose measures_<STEP>.csv has the
    same content (val.py writes both for the last step it validates); None if none does."""
    latest = (result_dir / MEASURES_CSV).read_bytes()
    for path in result_dir.glob("measures_*.csv"):
        step = path.stem.removeprefix("measures_")
        if step.isdigit() and path.read_bytes() == latest:
            return int(step)
    return None


class Reconstructions:
    """Our reconstructions of one job: val.py's imgs/ where saved, else the model run on the
    original (loaded once, when first needed)."""

    def __init__(self, log_dir_root: Path, job: Job, device: str) -> None:
        self.log_dir_root, self.job, self.device = log_dir_root, job, device
        self._model: ImageCodec | None = None

    def __call__(self, name: str, original: np.ndarray) -> np.ndarray:
        saved = self.job.result_dir / RECONSTRUCTIONS_DIR / f"{Path(name).stem}.png"
        if saved.is_file():
            return read_image(saved)
        if self._model is None:
            self._model = self._load_model()
        symbols = self._model.symbols(original)
        return self._model.reconstruct(symbols, *original.shape[:2])

    def _load_model(self) -> ImageCodec:
        from imgcomp.base.device import select_device  # imports torch: not for --help

        step = validated_step(self.job.result_dir)
        if step is None:
            warn(f"job {self.job.job_id}: no measures_<STEP>.csv in {self.job.result_dir} equals "
                 f"measures.csv; showing the latest checkpoint")
        log_dir = log_dirs.find_log_dir(self.log_dir_root, self.job.job_id)
        return log_dirs.load_codec(log_dir / log_dirs.CKPTS_DIRNAME, -1 if step is None else step,
                                   select_device(self.device))


def our_panel(job: Job, label: str, name: str, original: np.ndarray,
              reconstructions: Reconstructions) -> Panel:
    """Ours at its real bpp; warns if its MS-SSIM is not measures.csv's."""
    ours = reconstructions(name, original)
    if ours.shape != original.shape:
        raise ReportError(f"job {job.job_id}: the reconstruction of {name} is {ours.shape}, the "
                          f"original {original.shape}")
    real = next(m for m in job.real if m.img_name == name)
    recorded = next(m for m in job.estimate if m.img_name == name)
    bpp, ms_ssim, psnr = measure(original, ours, real.bpp * original.shape[0] * original.shape[1])
    if abs(ms_ssim - recorded.ms_ssim) > MS_SSIM_TOLERANCE:
        warn(f"job {job.job_id}, {name}: the reconstruction shown has MS-SSIM {ms_ssim:.4f}, "
             f"measures.csv {recorded.ms_ssim:.4f}: it is not what val.py measured")
    return Panel(label, ours, bpp, ms_ssim, psnr)


def build_viewers(log_dir_root: Path, jobs: Sequence[Job], labels: Sequence[str],
                  originals: dict[str, Path], names: Sequence[str], codec_names: Sequence[str],
                  device: str) -> list[Viewer]:
    reconstructions = [Reconstructions(log_dir_root, job, device) for job in jobs]
    viewers = []
    for name in tqdm(names, desc="viewer", unit="image"):
        original = read_image(originals[name])
        viewer = Viewer(name, Panel("Original", original), [], [])
        for job, label, recon in zip(jobs, labels, reconstructions, strict=True):
            ours = our_panel(job, f"Ours ({label})", name, original, recon)
            theirs = codec_panels(original, ours.bpp, codec_names)
            if len(jobs) > 1:  # say which of ours each codec was matched to
                theirs = [dataclasses.replace(p, label=f"{p.label} @ {label}") for p in theirs]
            viewer.ours.append(ours)
            viewer.codecs.append(theirs)
        viewers.append(viewer)
    return viewers


def table_data(jobs: Sequence[Job], labels: Sequence[str], viewers: Sequence[Viewer],
               codec_names: Sequence[str]) -> dict:
    """The per-image table as JSON for the page's script: columns (label, digits for numbers)
    and one row per image and job; codec columns only where the image has a viewer."""
    columns = [{"label": "image"}, {"label": "job"}, {"label": "real bpp", "digits": 4},
               {"label": "bpp (estimate)", "digits": 4}, {"label": "MS-SSIM", "digits": 4},
               {"label": "PSNR [dB]", "digits": 2}]
    for name in codec_names:
        columns += [{"label": f"{name.upper()} bpp", "digits": 4},
                    {"label": f"{name.upper()} MS-SSIM", "digits": 4},
                    {"label": f"{name.upper()} PSNR", "digits": 2}]
    shown = {v.name: v for v in viewers}
    rows = []
    for j, (job, label) in enumerate(zip(jobs, labels, strict=True)):
        for est, real in zip(job.estimate, job.real, strict=True):
            row = [est.img_name, label, real.bpp, est.bpp, est.ms_ssim, est.psnr]
            viewer = shown.get(est.img_name)
            for c in range(len(codec_names)):
                p = None if viewer is None else viewer.codecs[j][c]
                row += [None, None, None] if p is None else [p.bpp, p.ms_ssim, p.psnr]
            rows.append(row)
    links = {v.name: f"view-{i}" for i, v in enumerate(viewers)}
    return {"columns": columns, "rows": rows, "links": links}


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclasses.dataclass(frozen=True)
class BrowserRun:
    dom: str  # the page's DOM after its scripts ran
    console: list[str]  # the console's messages (errors included)


def render_in_browser(page: Path, screenshot: Path, chromium: str,
                      window: tuple[int, int] = DEFAULT_WINDOW) -> BrowserRun:
    """Open `page` in headless Chromium: screenshot of the window's top (PNG), the DOM after
    its scripts ran, and what the page wrote to the console. RuntimeError if it fails."""
    with tempfile.TemporaryDirectory(prefix="imgcomp-chromium-") as profile, \
            atomic_path(screenshot) as tmp:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               f"--window-size={window[0]},{window[1]}", f"--screenshot={tmp}", "--dump-dom",
               page.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0 or tmp.stat().st_size == 0:
            last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"{chromium} exited with {proc.returncode}: {last[0]}")
    console = [line.split("] ", 1)[-1] for line in proc.stderr.splitlines()
               if ":CONSOLE" in line]
    return BrowserRun(proc.stdout, console)


def parse_window(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,H, got {text!r}") from None
    if min(width, height) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: W and H must be positive")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgcomp report",
        description="One self-contained HTML page (opens from disk, no network) on validated "
                    "jobs: RD plots against the real bpp with the classical codecs, BD-rates, a "
                    "sortable per-image table, and a side-by-side viewer (original / ours / "
                    "codecs at about our real bpp) with zoom and a before/after slider. Needs "
                    "val.py --real_bpp results.")
    p.add_argument("log_dir_root", type=Path,
                   help="folder holding the '<JOB_ID> <DATASET>' result folders and the jobs' "
                        "log dirs")
    p.add_argument("job_ids", help="comma separated job ids (MMDD_HHMM)")
    p.add_argument("dataset", help="dataset name as val.py wrote it, e.g. kodak")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="PAGE.html")
    p.add_argument("--images", metavar="SPEC",
                   help="the originals: a folder or quoted glob (default: DATASET as val.py "
                        "reads it, e.g. kodak = $VAL_ROOT/kodak)")
    p.add_argument("--max_images", type=int, default=DEFAULT_MAX_IMAGES, metavar="N",
                   help=f"images with a viewer, the first N (default {DEFAULT_MAX_IMAGES}; "
                        "each adds about 4 PNGs per job to the page; 0: none)")
    p.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                   help=f"codecs in the viewer, encoded at about our real bpp (default "
                        f"{','.join(DEFAULT_CODECS)}; any of {','.join(CODECS)}; '' for none)")
    p.add_argument("--other_codecs_root", metavar="DIR",
                   help="the codecs' measures for the plots (as plotter.py's)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the model runs for reconstructions val.py did not save")
    p.add_argument("--screenshot", type=Path, metavar="PNG",
                   help="also open the page in headless Chromium and save a screenshot of its "
                        "top; the page's console messages are printed")
    p.add_argument("--window", type=parse_window, metavar="W,H",
                   default=",".join(map(str, DEFAULT_WINDOW)),
                   help="the screenshot's size (default %(default)s)")
    return p


def shown_path(path: Path) -> str:
    """`path` as the page shows it: relative to the working directory where it lies below it
    (no machine's absolute paths in a page that is shared)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _originals(spec: str, names: Sequence[str]) -> dict[str, Path]:
    try:
        _, paths = resolve_images(spec)
    except DatasetError as e:
        raise ReportError(f"originals: {e}; pass --images, or --max_images 0") from e
    by_name = {p.name: p for p in paths}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ReportError(f"originals: {', '.join(missing)} not in {spec!r} (found "
                          f"{len(paths)} images there); pass --images")
    return by_name


def _run(args: argparse.Namespace) -> int:
    if not args.log_dir_root.is_dir():
        raise ReportError(f"LOG_DIR_ROOT {args.log_dir_root} is not a directory")
    job_ids = _split(args.job_ids)
    codec_names = _split(args.codecs)
    if not job_ids:
        raise ReportError("no job ids given")
    unknown = [c for c in codec_names if c not in CODECS]
    missing = [c for c in codec_names if c in CODECS and not CODECS[c].available()]
    if unknown or missing:
        raise ReportError(f"--codecs: unknown {unknown}" if unknown
                          else f"--codecs: this Pillow lacks {missing}")
    if args.max_images < 0:
        raise ReportError(f"--max_images must be >= 0, got {args.max_images}")
    if not args.output.parent.is_dir():
        raise ReportError(f"-o {args.output}: folder {args.output.parent} does not exist")
    chromium = None
    if args.screenshot is not None:
        chromium = find_chromium()
        if chromium is None:
            raise ReportError(f"--screenshot needs Chromium ({' or '.join(CHROMIUM_NAMES)} on "
                              f"PATH; Debian: apt-get install chromium)")
        if not args.screenshot.parent.is_dir():
            raise ReportError(f"--screenshot {args.screenshot}: folder "
                              f"{args.screenshot.parent} does not exist")

    jobs = [load_job(args.log_dir_root, j, args.dataset) for j in job_ids]
    common = set.intersection(*({m.img_name for m in job.real} for job in jobs))
    names = [m.img_name for m in jobs[0].real if m.img_name in common][:args.max_images]
    originals = _originals(args.images or args.dataset, names) if names else {}

    our_images = {m.img_name for job in jobs for m in job.real}
    codecs_root = find_codec_results(args.other_codecs_root, args.dataset)
    points, anchors, plots = {}, {}, []
    for metric in METRIC_ATTRS:
        points[metric] = job_points([job.real for job in jobs], job_ids, metric)
        codecs = ([] if codecs_root is None else
                  load_codec_curves(codecs_root, args.dataset, metric, None, our_images))
        paper = paper_curve() if metric == "ms-ssim" and args.dataset == "kodak" else None
        anchors[metric] = [*codecs, *([paper] if paper else [])]
        plots.append(rd_plot_uri(metric, points[metric], codecs, paper, args.dataset))

    viewers = build_viewers(args.log_dir_root, jobs, job_ids, originals, names, codec_names,
                            args.device)
    codecs_from = (f"classical codecs from {html.escape(shown_path(codecs_root / args.dataset))}"
                   if codecs_root else "no classical codec results found")
    summary = (f"{len(jobs)} job(s) on {html.escape(args.dataset)} "
               f"({len(jobs[0].real)} images); our bpp: the real file sizes of real_bpp.csv "
               f"(val.py --real_bpp); {codecs_from}.")
    page = page_html(f"imgcomp report: {', '.join(job_ids)} on {args.dataset}", summary, plots,
                     comparison_html(points, anchors),
                     table_data(jobs, job_ids, viewers, codec_names), viewers)
    atomic_write_text(args.output, page)
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1e6:.1f} MB, "
          f"{len(viewers)} image(s) in the viewer)")
    if chromium is not None:
        try:
            run = render_in_browser(args.output, args.screenshot, chromium, args.window)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            raise ReportError(f"--screenshot: {e}") from e
        for message in run.console:
            warn(f"page console: {message}")
        print(f"wrote {args.screenshot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (ReportError, log_dirs.CheckpointError, ConfigError, ImageReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
