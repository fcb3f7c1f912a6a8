"""The rate-distortion figure (plotter.py, imgcomp report): our points and curve against the
classical codecs' curves and the paper's Fig. 1 curve, with the original plotter's axis ranges
widened to show all our points; drawn with matplotlib's Figure and Agg canvas (no pyplot)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgcomp.base.atomic import atomic_path
from imgcomp.evaluation.results import Curve, make_curve

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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
# The original plotter's axis ranges: 0..1.2 bpp and, its plot was MS-SSIM only, 0.85..1.0.
# Where no range is given they are widened to show every point of ours (a young model's bpp
# can be several, its MS-SSIM far below 0.85).
DEFAULT_X_RANGE = (0.0, 1.2)
MS_SSIM_DEFAULT_Y = (0.85, 1.0)
# Space around our outermost points when a default range is widened for them, relative to
# the range.
WIDEN_PAD = 0.08
BPP_LABEL, REAL_BPP_LABEL = "bpp", "bpp (real file sizes)"

# Normal figure: screen-sized, with a title. --paper_figure: a small fixed-size figure with
# larger fonts relative to it, no title, tight bounding box, 300 dpi for raster output and
# TrueType (not Type 3) fonts in PDFs, which publishers ask for.
NORMAL_FIGSIZE, NORMAL_DPI = (8.0, 6.0), 120
PAPER_FIGSIZE, PAPER_DPI = (5.0, 3.75), 300
NORMAL_RC = {"font.size": 10.0}
PAPER_RC = {"font.size": 12.0, "legend.fontsize": 9.0, "pdf.fonttype": 42, "ps.fonttype": 42}
CODEC_MARKERS = "sv^DPX<>p"


def paper_curve() -> Curve:
    bpp, ms_ssim = zip(*PAPER_FIG1, strict=True)
    return make_curve(PAPER_LABEL, bpp, ms_ssim)


def _tex_escape(text: str) -> str:
    """Labels (job ids like 0515_1103, file names) as literal LaTeX text."""
    out = text.replace("\\", r"\textbackslash{}")
    for ch in "_%&#${}":
        out = out.replace(ch, "\\" + ch)
    return out


def default_x_range(points: Curve) -> tuple[float, float]:
    """The original's 0..1.2, its top widened (to a multiple of 0.1) where our points go beyond
    it."""
    lo, hi = DEFAULT_X_RANGE
    top = float(points.bpp.max()) * (1 + WIDEN_PAD)
    return (lo, hi) if top <= hi else (lo, math.ceil(top * 10) / 10)


def default_y_range(metric: str, curves: Sequence[Curve], x_range: tuple[float, float],
                    points: Curve | None = None) -> tuple[float, float]:
    """MS-SSIM: the original's 0.85..1, its bottom widened (to a multiple of 0.05) where our
    `points` lie below it. Otherwise the range of the curves' points inside x_range, padded by
    5 %."""
    if metric == "ms-ssim":
        lo, hi = MS_SSIM_DEFAULT_Y
        if points is None:
            return lo, hi
        bottom = float(points.metric.min()) - WIDEN_PAD * (hi - float(points.metric.min()))
        return (lo, hi) if bottom >= lo else (math.floor(bottom * 20) / 20, hi)
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
            paper: Curve | None, **kwargs) -> None:
    """Draw and save the plot (see rd_figure for the arguments); the file type follows path's
    extension."""
    with rd_figure(line, points, codecs, paper, **kwargs) as (fig, options):
        with atomic_path(path) as tmp:  # keeps the suffix, which names the file type
            fig.savefig(tmp, **options)


@contextlib.contextmanager
def rd_figure(line: Curve, points: Curve, codecs: Sequence[Curve], paper: Curve | None, *,
              metric: str, title: str, x_range: tuple[float, float],
              y_range: tuple[float, float], paper_figure: bool, usetex: bool,
              show_points: bool = True, x_label: str = BPP_LABEL
              ) -> Iterator[tuple[Figure, dict]]:
    """The plot as (figure, savefig options), to save inside the context. `line` is our curve;
    `points` (our jobs' mean points, labelled) are drawn if show_points."""
    text = _tex_escape if usetex else str
    rc = {**(PAPER_RC if paper_figure else NORMAL_RC), "text.usetex": usetex}
    # Text objects read usetex when created and when drawn, so build and save inside the
    # context. Figure + Agg canvas: no pyplot state, no display needed.
    # matplotlib imported here: plotter.py --help and the report's page need none of it.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
        ax.set_xlabel(x_label)
        ax.set_ylabel(text(METRIC_LABELS[metric]))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        if paper_figure:
            options = {"dpi": PAPER_DPI, "bbox_inches": "tight", "pad_inches": 0.02}
        else:
            ax.set_title(text(title))
            fig.tight_layout()
            options = {"dpi": NORMAL_DPI}
        yield fig, options
