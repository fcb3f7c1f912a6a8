"""plotter.py: the rate-distortion plot (bpp vs MS-SSIM or PSNR) of validated jobs, against
classical codecs and (--paper_plot) the paper's Fig. 1 curve, plus a BD-rate table.

Inputs: `LOG_DIR_ROOT/<JOB_ID> <DATASET>/measures.csv` per job (written by val.py; each job is
one operating point) and `OTHER_CODECS_ROOT/<DATASET>/<codec>/<quality>/measures.csv` per codec
setting. Codec curves are always the mean over images per quality setting, sorted by bpp.

BD-rate (see `imgcomp.evaluation.results`) of ours against each codec and, for MS-SSIM, the paper's
curve: anchor = codec, test = ours, negative = ours needs fewer bits. It always uses our jobs'
mean (bpp, metric) points, whatever --style draws, as is usual for codec comparisons (one
averaged point per setting).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from imgcomp.base.atomic import atomic_path
from imgcomp.evaluation.baselines import DEFAULT_RESULTS_ROOT, results_root
from imgcomp.evaluation.results import (
    METRIC_ATTRS,
    Curve,
    Measure,
    bd_rate_table,
    format_bd_table,
    make_curve,
    mean_measures,
    non_monotone_points,
    read_measures_csv,
    write_bd_csv,
)

METRIC_LABELS = {"ms-ssim": "MS-SSIM", "psnr": "PSNR [dB]"}
PAPER_LABEL = "Mentzer et al. 2018 (paper, Fig. 1)"
# The paper's Fig. 1 curve on Kodak, (bpp, MS-SSIM).
PAPER_FIG1 = (
    (0.127, 0.9289), (0.153, 0.9417), (0.180, 0.9498), (0.206, 0.9554), (0.233, 0.9599),
    (0.259, 0.9637), (0.286, 0.9669), (0.312, 0.9696), (0.339, 0.9718), (0.365, 0.9738),
    (0.392, 0.9755), (0.418, 0.9771), (0.445, 0.9785), (0.471, 0.9797), (0.498, 0.9809),
    (0.524, 0.9819), (0.551, 0.9829), (0.578, 0.9838), (0.604, 0.9846), (0.631, 0.9853),
    (0.657, 0.9860), (0.684, 0.9867), (0.710, 0.9873), (0.737, 0.9878), (0.763, 0.9883),
    (0.790, 0.9888), (0.816, 0.9892), (0.843, 0.9896),
)
INTERP_GRID_POINTS = 100
# The original's defaults: --x_range 0,1.2 --y_range 0.85,1.0 (its plot was MS-SSIM only),
# --style interp, output plot_<TITLE>.png with TITLE from its TITLES (plot_Kodak.png).
DEFAULT_X_RANGE = (0.0, 1.2)
MS_SSIM_DEFAULT_Y = (0.85, 1.0)
DEFAULT_STYLE = ("interp",)
TITLES = {"u100": "Urban100", "b100": "B100", "rf100": "ImageNetVal", "kodak": "Kodak",
          "testset": "TestSet"}

# Normal figure: screen-sized, with a title. --paper_figure: a small fixed-size figure with
# larger fonts relative to it, no title, tight bounding box, 300 dpi for raster output and
# TrueType (not Type 3) fonts in PDFs, which publishers ask for.
NORMAL_FIGSIZE, NORMAL_DPI = (8.0, 6.0), 120
PAPER_FIGSIZE, PAPER_DPI = (5.0, 3.75), 300
NORMAL_RC = {"font.size": 10.0}
PAPER_RC = {"font.size": 12.0, "legend.fontsize": 9.0, "pdf.fonttype": 42, "ps.fonttype": 42}
CODEC_MARKERS = "sv^DPX<>p"


class PlotError(Exception):
    """A problem with the inputs; main prints it as one `error:` line."""


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def paper_curve() -> Curve:
    bpp, ms_ssim = zip(*PAPER_FIG1, strict=True)
    return make_curve(PAPER_LABEL, bpp, ms_ssim)


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """'a,b' -> (a, b) with a < b; PlotError otherwise."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise PlotError(f"{flag} {text!r}: expected 'a,b' with numbers a < b, e.g. 0,1.2")
    return lo, hi


def _read_measures(path: Path) -> list[Measure]:
    try:
        measures = read_measures_csv(path)
    except ValueError as e:
        raise PlotError(str(e)) from e
    if not measures:
        raise PlotError(f"{path}: no rows")
    return measures


def job_results_path(log_dir_root: Path, job_id: str, dataset: str) -> Path:
    return log_dir_root / f"{job_id} {dataset}" / "measures.csv"


def job_datasets(log_dir_root: Path, job_id: str) -> list[str]:
    """Datasets with a `<JOB_ID> <DATASET>/measures.csv` (training log dirs have none)."""
    prefix = f"{job_id} "
    return sorted(p.name[len(prefix):] for p in log_dir_root.iterdir()
                  if p.name.startswith(prefix) and (p / "measures.csv").is_file())


def load_job_measures(log_dir_root: Path, job_id: str, dataset: str) -> list[Measure]:
    """A job's per-image measures on dataset; PlotError naming the expected file and the
    datasets the job does have results for."""
    path = job_results_path(log_dir_root, job_id, dataset)
    if not path.is_file():
        have = job_datasets(log_dir_root, job_id)
        raise PlotError(f"job {job_id}: no results on {dataset!r}, expected {path} "
                        f"(run val.py); results of this job exist for: "
                        f"{', '.join(have) if have else 'no dataset'}")
    return _read_measures(path)


def interp_curve(image_curves: Sequence[tuple[Sequence[float], Sequence[float]]],
                 num: int = INTERP_GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The mean over images of their piecewise-linear (bpp, metric) curves, on `num` bpp values
    spanning the range every image covers. image_curves: per image, (bpps, metric values) with
    one entry per job. ValueError if there is no image or no common range."""
    curves = []
    for bpp, values in image_curves:
        bpp_a, values_a = np.asarray(bpp, dtype=float), np.asarray(values, dtype=float)
        order = np.argsort(bpp_a)
        curves.append((bpp_a[order], values_a[order]))
    if not curves:
        raise ValueError("no image is in every job")
    lo, hi = max(b[0] for b, _ in curves), min(b[-1] for b, _ in curves)
    if not lo < hi:
        raise ValueError(f"the images' bpp ranges have no common part "
                         f"(largest minimum {lo:.4g} >= smallest maximum {hi:.4g})")
    grid = np.linspace(lo, hi, num)
    return grid, np.mean([np.interp(grid, b, v) for b, v in curves], axis=0)


def job_points(jobs: Sequence[Sequence[Measure]], labels: Sequence[str], metric: str) -> Curve:
    """Our operating points: each job's mean (bpp, metric), labelled."""
    means = [mean_measures(job) for job in jobs]
    attr = METRIC_ATTRS[metric]
    return make_curve("Ours", [m.bpp for m in means], [getattr(m, attr) for m in means], labels)


def our_line(jobs: Sequence[Sequence[Measure]], points: Curve, metric: str,
             style: str) -> tuple[Curve, str]:
    """(our drawn curve, the style actually used): the job points for 'mean'; for 'interp' the
    per-image interpolated mean, falling back to 'mean' (with a warning) where it cannot be
    formed."""
    if style == "mean":
        return points, "mean"
    if len(jobs) < 2:
        warn("--style interp needs >= 2 jobs; using --style mean")
        return points, "mean"
    per_job = [{m.img_name: m for m in job} for job in jobs]
    common = sorted(set.intersection(*(set(d) for d in per_job)))
    left_out = set().union(*per_job) - set(common)
    if left_out:
        warn(f"--style interp: {len(left_out)} image(s) not validated by every job left out")
    attr = METRIC_ATTRS[metric]
    try:
        grid, mean = interp_curve([([d[n].bpp for d in per_job],
                                    [getattr(d[n], attr) for d in per_job]) for n in common])
    except ValueError as e:
        warn(f"--style interp: {e}; using --style mean")
        return points, "mean"
    return Curve("Ours", grid, mean), "interp"


def load_codec_curves(root: Path, dataset: str, metric: str,
                      codecs: Sequence[str] | None = None,
                      our_images: set[str] | None = None) -> list[Curve]:
    """One curve per codec folder under root/dataset (only `codecs` if given): per quality
    folder with a measures.csv, the mean over images. Missing folders only warn. If our_images
    is given, warn when a codec was measured on other images."""
    folder = root / dataset
    if not folder.is_dir():
        warn(f"no classical codec results in {folder} (see --other_codecs_root, "
             f"$OTHER_CODECS_ROOT); plotting without codecs")
        return []
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = found
    if codecs is not None:
        missing = [c for c in codecs if c not in found]
        if missing:
            warn(f"no results for codec(s) {', '.join(missing)} in {folder} "
                 f"(found: {', '.join(found) if found else 'none'})")
        names = [c for c in codecs if c in found]
    curves = []
    for name in names:
        bpps, values, other_images = [], [], False
        for quality in sorted(p for p in (folder / name).iterdir() if p.is_dir()):
            if not (quality / "measures.csv").is_file():
                continue  # a setting still being measured
            measures = _read_measures(quality / "measures.csv")
            means = mean_measures(measures)
            bpps.append(means.bpp)
            values.append(getattr(means, METRIC_ATTRS[metric]))
            if our_images is not None and {m.img_name for m in measures} != our_images:
                other_images = True
        if not bpps:
            warn(f"codec {name}: no <quality>/measures.csv in {folder / name}; skipped")
            continue
        if other_images:
            warn(f"codec {name}: measured on other images than ours; comparison is not like "
                 f"for like")
        curves.append(make_curve(name, bpps, values))
    return curves


def _tex_escape(text: str) -> str:
    """Labels (job ids like 0515_1103, file names) as literal LaTeX text."""
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "_%&#${}":
        out = out.replace(ch, "\\" + ch)
    return out


def default_output(dataset: str) -> str:
    """plot_<TITLE>.png as the original: plot_Kodak.png for kodak; other names as they are."""
    return f"plot_{TITLES.get(dataset, dataset)}.png"


def default_y_range(metric: str, curves: Sequence[Curve],
                    x_range: tuple[float, float]) -> tuple[float, float]:
    """MS-SSIM: the original's 0.85..1. Otherwise the range of the curves' points inside
    x_range, padded by 5 %."""
    if metric == "ms-ssim":
        return MS_SSIM_DEFAULT_Y
    ys = np.concatenate([c.metric[(c.bpp >= x_range[0]) & (c.bpp <= x_range[1])]
                         for c in curves])
    if not len(ys):
        ys = np.concatenate([c.metric for c in curves])
    lo, hi = float(ys.min()), float(ys.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def points_outside(points: Curve, x_range: tuple[float, float],
                   y_range: tuple[float, float]) -> list[str]:
    """Labels of our points that the axis ranges leave out of the plot."""
    out = []
    for i, (b, v) in enumerate(zip(points.bpp, points.metric, strict=True)):
        if not (x_range[0] <= b <= x_range[1] and y_range[0] <= v <= y_range[1]):
            label = points.point_labels[i] if points.point_labels else f"{b:.3f}"
            out.append(f"{label} ({b:.3f} bpp, {v:.4g})")
    return out


def plot_rd(path: Path, line: Curve, points: Curve, codecs: Sequence[Curve],
            paper: Curve | None, *, metric: str, title: str, x_range: tuple[float, float],
            y_range: tuple[float, float], paper_figure: bool, usetex: bool,
            show_points: bool = True) -> None:
    """Draw and save the plot; the file type follows path's extension. `line` is our curve;
    `points` (our jobs' mean points, labelled) are drawn if show_points."""
    text = _tex_escape if usetex else str
    rc = {**(PAPER_RC if paper_figure else NORMAL_RC), "text.usetex": usetex}
    # Text objects read usetex when created and when drawn, so build and save inside the
    # context. Figure + Agg canvas: no pyplot state, no display needed.
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=PAPER_FIGSIZE if paper_figure else NORMAL_FIGSIZE)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(line.bpp, line.metric, color="tab:red", linewidth=2.0, zorder=5,
                label=text(line.label))
        if show_points:
            ax.plot(points.bpp, points.metric, linestyle="none", marker="o", color="tab:red",
                    markersize=6, zorder=6)
            for x, y, label in zip(points.bpp, points.metric, points.point_labels, strict=True):
                # Above-left of the point on a faint white box: readable over other curves.
                ax.annotate(text(label), (x, y), xytext=(-5, 5), textcoords="offset points",
                            ha="right", va="bottom", fontsize="small", color="tab:red",
                            zorder=7, bbox={"boxstyle": "round,pad=0.1", "fc": "white",
                                            "ec": "none", "alpha": 0.7})
        if paper is not None:
            ax.plot(paper.bpp, paper.metric, color="black", linestyle="--", linewidth=1.5,
                    label=text(paper.label), zorder=4)
        for i, codec in enumerate(codecs):
            ax.plot(codec.bpp, codec.metric, marker=CODEC_MARKERS[i % len(CODEC_MARKERS)],
                    markersize=4, linewidth=1.2, label=text(codec.label),
                    color=f"C{i % 10}" if i % 10 != 3 else "C9")  # C3 is ours' red
        ax.set_xlim(*x_range)
        ax.set_ylim(*y_range)
        ax.set_xlabel("bpp")
        ax.set_ylabel(text(METRIC_LABELS[metric]))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        if paper_figure:
            options = {"dpi": PAPER_DPI, "bbox_inches": "tight", "pad_inches": 0.02}
        else:
            ax.set_title(text(title))
            fig.tight_layout()
            options = {"dpi": NORMAL_DPI}
        with atomic_path(path) as tmp:  # keeps the suffix, which names the file type
            fig.savefig(tmp, **options)


def build_parser() -> argparse.ArgumentParser:
    """The original plotter.py's flags (names, defaults, meaning) and, apart, the port's."""
    p = argparse.ArgumentParser(
        prog="plotter.py",
        description="Rate-distortion plot of validated jobs (val.py's measures.csv) against "
                    "classical codecs (and with --paper_plot the paper's Fig. 1 curve), with a "
                    "BD-rate table (printed, and written beside the plot as "
                    "<plot>_bdrate.csv).")
    p.add_argument("log_dir_root", help="folder holding the '<JOB_ID> <DATASET>' result folders")
    p.add_argument("job_ids", help="comma separated job ids (MMDD_HHMM); one operating "
                                   "point each")
    p.add_argument("dataset", help="dataset name as val.py wrote it, e.g. kodak")
    p.add_argument("--x_range", metavar="A,B", default="0,1.2",
                   help="bpp axis range (default 0,1.2)")
    p.add_argument("--y_range", metavar="A,B",
                   help="metric axis range (default 0.85,1.0 for MS-SSIM; auto for PSNR)")
    p.add_argument("--latex", action="store_true",
                   help="render text with LaTeX if a latex binary is found")
    p.add_argument("--output_path", "-o", "--output", dest="output", metavar="PATH",
                   help="plot file; type from its extension (default plot_<TITLE>.png: "
                        "plot_Kodak.png for kodak, else plot_<DATASET>.png)")
    p.add_argument("--style", nargs="+", choices=("interp", "mean"),
                   default=list(DEFAULT_STYLE), metavar="{interp,mean}",
                   help="interp (default): our curve is, per image, its curve across the jobs "
                        "interpolated onto a common bpp grid, averaged over images (needs >= 2 "
                        "jobs); mean: our jobs' mean (bpp, metric) points, labelled (--ids); "
                        "both: '--style interp mean'")
    p.add_argument("--paper_plot", action="store_true",
                   help="add the paper's Fig. 1 curve (MS-SSIM on Kodak) and the BD-rate "
                        "against it")
    p.add_argument("--ids", nargs="+", metavar="LABEL",
                   help="labels of the jobs' mean points, in the order of JOB_IDS (jobs "
                        "without one: their job id)")
    port = p.add_argument_group("flags of the port only")
    port.add_argument("--paper_figure", action="store_true",
                      help="figure for a paper: 5x3.75 in, larger fonts, no title, tight "
                           "bounding box, 300 dpi, TrueType fonts in PDF")
    port.add_argument("--metric", choices=tuple(METRIC_ATTRS), default="ms-ssim",
                      help="distortion metric (default: ms-ssim; the paper's curve only there)")
    port.add_argument("--other_codecs_root", metavar="DIR",
                      help="holds <DATASET>/<codec>/<quality>/measures.csv (default: "
                           f"$OTHER_CODECS_ROOT, else {DEFAULT_RESULTS_ROOT}/)")
    port.add_argument("--codecs", metavar="A,B", help="comma separated codecs to draw "
                                                      "(default: every codec folder found)")
    return p


def _split_list(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _run(args: argparse.Namespace) -> int:
    log_dir_root = Path(args.log_dir_root)
    if not log_dir_root.is_dir():
        raise PlotError(f"LOG_DIR_ROOT {log_dir_root} is not a directory")
    if ";" in args.job_ids:
        raise PlotError("JOB_IDS with ';' (several curves of ours, as the original drew them) "
                        "is not supported: plot each group of jobs separately")
    job_ids = _split_list(args.job_ids)
    if not job_ids:
        raise PlotError("no job ids given")
    ids = args.ids or []
    if len(ids) > len(job_ids):
        raise PlotError(f"--ids gives {len(ids)} label(s) for {len(job_ids)} job(s)")
    labels = [*ids, *job_ids[len(ids):]]
    x_range = parse_range(args.x_range, "--x_range")
    y_range = parse_range(args.y_range, "--y_range") if args.y_range else None
    usetex = False
    if args.latex:
        usetex = shutil.which("latex") is not None
        if not usetex:
            warn("--latex: no latex binary found; using matplotlib's own text rendering")

    jobs = [load_job_measures(log_dir_root, j, args.dataset) for j in job_ids]
    points = job_points(jobs, labels, args.metric)
    styles = set(args.style)
    line, style = our_line(jobs, points, args.metric, "interp" if "interp" in styles else "mean")
    show_points = "mean" in styles or style == "mean"
    if show_points and style == "interp":
        style = "interp+mean"
    for label, job_id, job in zip(labels, job_ids, jobs, strict=True):
        means = mean_measures(job)
        print(f"{label} ({job_id}): {len(job)} images, bpp {means.bpp:.4f}, {args.metric} "
              f"{getattr(means, METRIC_ATTRS[args.metric]):.4f}")
    dominated = non_monotone_points(points)
    if dominated:
        warn(f"our points are not monotone: at {', '.join(dominated)} the {args.metric} is no "
             f"higher than at a lower bpp; BD-rates against them are unreliable")

    codecs_root = results_root(args.other_codecs_root)
    our_images = {m.img_name for job in jobs for m in job}
    codecs = load_codec_curves(codecs_root, args.dataset, args.metric,
                               _split_list(args.codecs) if args.codecs else None, our_images)
    paper = None
    if args.paper_plot:
        if args.metric == "ms-ssim":
            paper = paper_curve()
        else:
            warn("--paper_plot: the paper's Fig. 1 curve is MS-SSIM only; not drawn")

    all_curves = [points, line, *codecs, *([paper] if paper else [])]
    y_range = y_range or default_y_range(args.metric, all_curves, x_range)
    outside = points_outside(points, x_range, y_range)
    if outside:
        warn(f"our point(s) {', '.join(outside)} lie outside the plot (x {x_range[0]:g}.."
             f"{x_range[1]:g}, y {y_range[0]:g}..{y_range[1]:g}); see --x_range, --y_range")
    out = Path(args.output or default_output(args.dataset))
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{args.dataset}: {METRIC_LABELS[args.metric]} vs bpp "
             f"({len(jobs)} job(s), style {style})")
    plot_kwargs = dict(metric=args.metric, title=title, x_range=x_range, y_range=y_range,
                       paper_figure=args.paper_figure, show_points=show_points)
    try:
        plot_rd(out, line, points, codecs, paper, usetex=usetex, **plot_kwargs)
    except Exception as e:  # any failure of the LaTeX toolchain: retry without it
        if not usetex:
            raise
        warn(f"--latex: rendering with LaTeX failed ({str(e).splitlines()[0]}); "
             f"using matplotlib's own text rendering")
        plot_rd(out, line, points, codecs, paper, usetex=False, **plot_kwargs)
    print(f"wrote {out}")

    rows = bd_rate_table(points, [*codecs, *([paper] if paper else [])], args.metric)
    bd_path = out.with_name(out.stem + "_bdrate.csv")
    write_bd_csv(bd_path, rows)
    if rows:
        print(f"BD-rate of ours vs each anchor ({args.metric}; negative = ours needs fewer "
              f"bits; points = anchor/ours):")
        print(format_bd_table(rows))
    print(f"wrote {bd_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (PlotError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
