"""plotter.py: the rate-distortion plot (bpp vs MS-SSIM or PSNR) of validated jobs, against
classical codecs and (--paper_plot) the paper's Fig. 1 curve, plus a BD-rate table.

Inputs: `LOG_DIR_ROOT/<JOB_ID> <DATASET>/measures.csv` per job (written by val.py; each job is
one operating point; with --real_bpp its bpp are replaced by the real file sizes of
`real_bpp.csv` beside it, val.py --real_bpp) and
`OTHER_CODECS_ROOT/<DATASET>/<codec>/<quality>/measures.csv` per codec setting (real file sizes;
by default from ./other_codecs, else the committed results/other_codecs). Codec curves are
always the mean over images per quality setting, sorted by bpp.

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

import numpy as np

from imgcomp.evaluation.baselines import (
    COMMITTED_RESULTS_ROOT,
    DEFAULT_RESULTS_ROOT,
    RESULTS_ROOT_ENV,
    results_roots_to_read,
)
from imgcomp.evaluation.rd_figure import (
    BPP_LABEL,
    DEFAULT_X_RANGE,
    METRIC_LABELS,
    MS_SSIM_DEFAULT_Y,
    REAL_BPP_LABEL,
    default_x_range,
    default_y_range,
    paper_curve,
    plot_rd,
    points_outside,
)
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    METRIC_ATTRS,
    REAL_BPP_CSV,
    Curve,
    Measure,
    bd_rate_table,
    format_bd_table,
    make_curve,
    mean_measures,
    non_monotone_points,
    read_bpp_real,
    read_measures_csv,
    results_dir,
    with_real_bpp,
    write_bd_csv,
)

INTERP_GRID_POINTS = 100
# The original's defaults: --style interp, output plot_<TITLE>.png with TITLE from its TITLES
# (plot_Kodak.png); its axis ranges are rd_figure's defaults.
DEFAULT_STYLE = ("interp",)
TITLES = {"u100": "Urban100", "b100": "B100", "rf100": "ImageNetVal", "kodak": "Kodak",
          "testset": "TestSet"}


class PlotError(Exception):
    """A problem with the inputs; main prints it as one `error:` line."""


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


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
    return results_dir(log_dir_root, job_id, dataset) / MEASURES_CSV


def job_datasets(log_dir_root: Path, job_id: str) -> list[str]:
    """Datasets with a `<JOB_ID> <DATASET>/measures.csv` (training log dirs have none)."""
    prefix = f"{job_id} "
    return sorted(p.name[len(prefix):] for p in log_dir_root.iterdir()
                  if p.name.startswith(prefix) and (p / MEASURES_CSV).is_file())


def load_job_measures(log_dir_root: Path, job_id: str, dataset: str,
                      real_bpp: bool = False) -> list[Measure]:
    """A job's per-image measures on dataset, with `real_bpp` their bpp the real file sizes
    of real_bpp.csv; PlotError naming the expected file (and the datasets the job does have
    results for)."""
    path = job_results_path(log_dir_root, job_id, dataset)
    if not path.is_file():
        have = job_datasets(log_dir_root, job_id)
        raise PlotError(f"job {job_id}: no results on {dataset!r}, expected {path} "
                        f"(run val.py); results of this job exist for: "
                        f"{', '.join(have) if have else 'no dataset'}")
    measures = _read_measures(path)
    if not real_bpp:
        return measures
    real_path = path.with_name(REAL_BPP_CSV)  # val.py --real_bpp writes it beside
    if not real_path.is_file():
        raise PlotError(f"job {job_id}: no real file sizes, expected {real_path} (run val.py "
                        f"{log_dir_root} {job_id} <{dataset} images> --real_bpp)")
    try:
        return with_real_bpp(measures, read_bpp_real(real_path), real_path)
    except ValueError as e:
        raise PlotError(str(e)) from e


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


def find_codec_results(flag: str | None, dataset: str) -> Path | None:
    """The codecs' results root holding `dataset` (see baselines.results_roots_to_read: the
    flag or $OTHER_CODECS_ROOT, else ./other_codecs, then the committed results); None, with
    a warning naming every place looked in, if none holds it."""
    roots = results_roots_to_read(flag)
    for root in roots:
        if (root / dataset).is_dir():
            return root
    warn(f"no classical codec results for {dataset!r} in "
         f"{' nor '.join(str(root / dataset) for root in roots)} (see --other_codecs_root, "
         f"${RESULTS_ROOT_ENV}; other_codecs.py measures them); plotting without codecs")
    return None


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
            if not (quality / MEASURES_CSV).is_file():
                continue  # a setting still being measured
            measures = _read_measures(quality / MEASURES_CSV)
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


def default_output(dataset: str) -> str:
    """plot_<TITLE>.png as the original: plot_Kodak.png for kodak; other names as they are."""
    return f"plot_{TITLES.get(dataset, dataset)}.png"


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
    p.add_argument("--x_range", metavar="A,B",
                   help="bpp axis range (default 0,1.2, widened to show all our points)")
    p.add_argument("--y_range", metavar="A,B",
                   help="metric axis range (default 0.85,1.0 for MS-SSIM, widened to show all "
                        "our points; auto for PSNR)")
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
                           f"${RESULTS_ROOT_ENV}, else ./{DEFAULT_RESULTS_ROOT}/ if it holds "
                           f"DATASET, else the committed "
                           f"{COMMITTED_RESULTS_ROOT.parent.name}/{COMMITTED_RESULTS_ROOT.name}/)")
    port.add_argument("--real_bpp", action="store_true",
                      help="our bpp from each job's real_bpp.csv (the real file sizes, val.py "
                           "--real_bpp) instead of measures.csv's estimate, in the plot and the "
                           "BD-rates; the codecs' are real file sizes already")
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
    x_range = parse_range(args.x_range, "--x_range") if args.x_range else None
    y_range = parse_range(args.y_range, "--y_range") if args.y_range else None
    usetex = False
    if args.latex:
        usetex = shutil.which("latex") is not None
        if not usetex:
            warn("--latex: no latex binary found; using matplotlib's own text rendering")

    jobs = [load_job_measures(log_dir_root, j, args.dataset, args.real_bpp) for j in job_ids]
    bpp_name = "real bpp" if args.real_bpp else "bpp"
    points = job_points(jobs, labels, args.metric)
    styles = set(args.style)
    line, style = our_line(jobs, points, args.metric, "interp" if "interp" in styles else "mean")
    show_points = "mean" in styles or style == "mean"
    if show_points and style == "interp":
        style = "interp+mean"
    for label, job_id, job in zip(labels, job_ids, jobs, strict=True):
        means = mean_measures(job)
        print(f"{label} ({job_id}): {len(job)} images, {bpp_name} {means.bpp:.4f}, "
              f"{args.metric} {getattr(means, METRIC_ATTRS[args.metric]):.4f}")
    dominated = non_monotone_points(points)
    if dominated:
        warn(f"our points are not monotone: at {', '.join(dominated)} the {args.metric} is no "
             f"higher than at a lower bpp; BD-rates against them are unreliable")

    codecs_root = find_codec_results(args.other_codecs_root, args.dataset)
    codecs = []
    if codecs_root is not None:
        print(f"classical codecs: {codecs_root / args.dataset}")
        our_images = {m.img_name for job in jobs for m in job}
        codecs = load_codec_curves(codecs_root, args.dataset, args.metric,
                                   _split_list(args.codecs) if args.codecs else None,
                                   our_images)
    paper = None
    if args.paper_plot:
        if args.metric == "ms-ssim":
            paper = paper_curve()
        else:
            warn("--paper_plot: the paper's Fig. 1 curve is MS-SSIM only; not drawn")

    all_curves = [points, line, *codecs, *([paper] if paper else [])]
    if x_range is None:
        x_range = default_x_range(points)
        if x_range != DEFAULT_X_RANGE:
            print(f"note: bpp axis widened to {x_range[0]:g}..{x_range[1]:g} to show all our "
                  f"points (--x_range sets it)")
    if y_range is None:
        y_range = default_y_range(args.metric, all_curves, x_range, points)
        if args.metric == "ms-ssim" and y_range != MS_SSIM_DEFAULT_Y:
            print(f"note: MS-SSIM axis widened to {y_range[0]:g}..{y_range[1]:g} to show all "
                  f"our points (--y_range sets it)")
    outside = points_outside(points, x_range, y_range)
    if outside:
        warn(f"our point(s) {', '.join(outside)} lie outside the plot (x {x_range[0]:g}.."
             f"{x_range[1]:g}, y {y_range[0]:g}..{y_range[1]:g}); see --x_range, --y_range")
    out = Path(args.output or default_output(args.dataset))
    out.parent.mkdir(parents=True, exist_ok=True)
    title = (f"{args.dataset}: {METRIC_LABELS[args.metric]} vs {bpp_name} "
             f"({len(jobs)} job(s), style {style})")
    plot_kwargs = dict(metric=args.metric, title=title, x_range=x_range, y_range=y_range,
                       paper_figure=args.paper_figure, show_points=show_points,
                       x_label=REAL_BPP_LABEL if args.real_bpp else BPP_LABEL)
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
        print(f"BD-rate of ours ({bpp_name}) vs each anchor ({args.metric}; negative = ours "
              f"needs fewer bits; points = anchor/ours):")
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
