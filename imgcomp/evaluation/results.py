"""What every evaluation shares (val.py, other_codecs.py, plotter.py, imgcomp report, bench/):
the measures of one reconstruction (bpp, MS-SSIM, PSNR), the measures.csv format, the real file
sizes of real_bpp.csv, their means over images, and the BD-rate of one rate-distortion curve
against another.

BD-rate (Bjontegaard delta rate, `bjontegaard` package, Akima interpolation of log10(bpp) over
the metric, integrated over the metric range both curves cover): anchor = e.g. a codec, test =
ours; negative = ours needs fewer bits.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcomp.base.atomic import atomic_open

# The results layout, the one place that spells it (val.py writes it; plotter.py, imgcomp
# report and docs/render_results.py read it): LOG_DIR_ROOT/"<JOB_ID> <DATASET>"/ holds
# measures_<STEP>.csv and real_bpp_<STEP>.csv of each checkpoint validated, measures.csv and
# real_bpp.csv of the last one, the reconstructions in imgs/ and the files in bitstreams/.
MEASURES_CSV = "measures.csv"
REAL_BPP_CSV = "real_bpp.csv"
RECONSTRUCTIONS_DIR = "imgs"
BITSTREAMS_DIR = "bitstreams"


def results_dir(log_dir_root: str | os.PathLike, job_id: str, dataset: str,
                refine: int = 0) -> Path:
    """The folder of one job's results on one dataset; with `refine` steps of encode-time
    refinement (val.py --refine), one of its own, its dataset named `<DATASET>_refine<N>`."""
    return Path(log_dir_root) / f"{job_id} {dataset}{f'_refine{refine}' if refine else ''}"


def step_csv(name: str, step: int) -> str:
    """The name of a checkpoint's own copy of a results CSV: measures.csv -> measures_STEP.csv."""
    return f"{name.removesuffix('.csv')}_{step}.csv"


MEASURES_HEADER = ("img_name", "bpp", "ms-ssim", "psnr")
# Distortion metric (as named in measures.csv and by plotter.py --metric) -> attribute of
# Measure and MeanMeasures.
METRIC_ATTRS = {"ms-ssim": "ms_ssim", "psnr": "psnr"}
# Akima, not the classic cubic fit: cubic needs >= 4 points per curve, while the paper has
# 3 operating points. The package's Akima uses a linear spline for a 2-point curve.
BD_METHOD = "akima"
BD_MIN_POINTS = 2
BD_CSV_HEADER = ("anchor", "bd_rate_percent", "metric", "note")


@dataclass(frozen=True)
class Measure:
    img_name: str
    bpp: float
    ms_ssim: float
    psnr: float


@dataclass(frozen=True)
class MeanMeasures:
    num_images: int
    bpp: float
    ms_ssim: float
    psnr: float


@dataclass(eq=False)
class Curve:
    """Points of one rate-distortion curve, sorted by bpp; point_labels follow that order."""

    label: str
    bpp: np.ndarray
    metric: np.ndarray
    point_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class BDRow:
    anchor: str
    bd_rate_percent: float
    metric: str
    note: str
    anchor_points: int
    our_points: int


def measure(original: np.ndarray, reconstruction: np.ndarray, num_bits: float) -> tuple[
        float, float, float]:
    """(bpp over the original's pixels, MS-SSIM, PSNR) of an H x W x 3 uint8 reconstruction."""
    # Imported here: MS-SSIM runs on torch, which the scripts' --help and the results' readers
    # (plotter.py) need not import.
    from imgcomp.evaluation.quality import ms_ssim_uint8, psnr_uint8

    h, w = original.shape[:2]
    return (num_bits / (h * w), ms_ssim_uint8(original, reconstruction),
            psnr_uint8(original, reconstruction))


def mean_measures(measures: Sequence[Measure]) -> MeanMeasures:
    """The mean bpp, MS-SSIM and PSNR over images (an operating point of a job or a codec
    setting)."""
    return MeanMeasures(
        len(measures),
        float(np.mean([m.bpp for m in measures])),
        float(np.mean([m.ms_ssim for m in measures])),
        float(np.mean([m.psnr for m in measures])),
    )


def write_measures_csv(path: str | os.PathLike, measures: Iterable[Measure]) -> None:
    """Write `img_name,bpp,ms-ssim,psnr`, one row per image, in the given order."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MEASURES_HEADER)
        for m in measures:
            writer.writerow([m.img_name, f"{m.bpp:.6f}", f"{m.ms_ssim:.6f}", f"{m.psnr:.4f}"])


def read_measures_csv(path: str | os.PathLike) -> list[Measure]:
    """Rows of a measures.csv; ValueError naming the file if it is not one."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or tuple(rows[0]) != MEASURES_HEADER:
        raise ValueError(f"{path}: not a measures.csv (header must be "
                         f"{','.join(MEASURES_HEADER)})")
    try:
        return [Measure(r[0], float(r[1]), float(r[2]), float(r[3])) for r in rows[1:]]
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed row: {e}") from e


def read_bpp_real(path: str | os.PathLike) -> dict[str, float]:
    """img_name -> bpp_real (the real compressed file's size, header included) of a
    real_bpp.csv (val.py --real_bpp); ValueError naming the file if it is not one."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"img_name", "bpp_real"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{path}: not a real_bpp.csv (no img_name and bpp_real columns)")
        try:
            return {row["img_name"]: float(row["bpp_real"]) for row in reader}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed row: {e}") from e


def with_real_bpp(measures: Sequence[Measure], bpp_real: dict[str, float],
                  source: str | os.PathLike) -> list[Measure]:
    """`measures` with each image's bpp replaced by its real one; ValueError naming `source`
    (the real_bpp.csv) if it lacks some of the images."""
    missing = [m.img_name for m in measures if m.img_name not in bpp_real]
    if missing:
        raise ValueError(f"{source}: no real bpp of {len(missing)} image(s) of measures.csv "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                         f"re-run val.py with --real_bpp")
    return [dataclasses.replace(m, bpp=bpp_real[m.img_name]) for m in measures]


def make_curve(label: str, bpp: Sequence[float], metric: Sequence[float],
               point_labels: Sequence[str] = ()) -> Curve:
    """A Curve with its points (and point labels, if any) sorted by bpp."""
    bpp_a, metric_a = np.asarray(bpp, dtype=float), np.asarray(metric, dtype=float)
    order = np.argsort(bpp_a, kind="stable")
    labels = tuple(point_labels[i] for i in order) if point_labels else ()
    return Curve(label, bpp_a[order], metric_a[order], labels)


def non_monotone_points(curve: Curve) -> list[str]:
    """Labels of the points whose metric is not above that of every lower-bpp point (BD-rates
    against such a curve are unreliable)."""
    order = np.argsort(curve.bpp, kind="stable")
    best = -math.inf
    dominated = []
    for i in order:
        if curve.metric[i] <= best:
            dominated.append(curve.point_labels[i] if curve.point_labels else f"{curve.bpp[i]:.3f}")
        best = max(best, curve.metric[i])
    return dominated


def _bd_points(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(rates, metric values) sorted by strictly increasing metric, as the interpolation over
    the metric needs; points with equal metric are merged (mean rate), bpp <= 0 dropped."""
    ok = np.isfinite(curve.bpp) & np.isfinite(curve.metric) & (curve.bpp > 0)
    dist, inverse = np.unique(curve.metric[ok], return_inverse=True)
    rate = np.bincount(inverse, weights=curve.bpp[ok]) / np.bincount(inverse)
    return rate, dist


def bd_rate(anchor: Curve, ours: Curve, metric: str) -> tuple[float, str, int, int]:
    """(BD-rate % of ours vs anchor, note, anchor points, our points); NaN with the reason in
    the note if a curve has too few points or the metric ranges do not overlap."""
    # Here, not at the top: the package loads matplotlib.pyplot (~1 s), which val.py and
    # other_codecs.py (and its worker processes) never need.
    import bjontegaard as bd

    a_rate, a_dist = _bd_points(anchor)
    o_rate, o_dist = _bd_points(ours)
    n_a, n_o = len(a_dist), len(o_dist)
    if min(n_a, n_o) < BD_MIN_POINTS:
        return (math.nan, f"too few distinct points (anchor {n_a}, ours {n_o}); "
                f"needs >= {BD_MIN_POINTS} per curve", n_a, n_o)
    fmt = ".4f" if metric == "ms-ssim" else ".2f"
    lo, hi = max(a_dist[0], o_dist[0]), min(a_dist[-1], o_dist[-1])
    if not lo < hi:
        return (math.nan, f"no overlap in {metric}: anchor {a_dist[0]:{fmt}}..{a_dist[-1]:{fmt}}"
                f", ours {o_dist[0]:{fmt}}..{o_dist[-1]:{fmt}}", n_a, n_o)
    union = max(a_dist[-1], o_dist[-1]) - min(a_dist[0], o_dist[0])
    # min_overlap=0: the package would only warn; the overlap goes into the note instead.
    value = bd.bd_rate(a_rate, a_dist, o_rate, o_dist, BD_METHOD,
                       require_matching_points=False, min_overlap=0)
    note = (f"{BD_METHOD}; over {metric} {lo:{fmt}}..{hi:{fmt}} "
            f"({100 * (hi - lo) / union:.0f}% of the union range)")
    return float(value), note, n_a, n_o


def bd_rate_table(ours: Curve, anchors: Sequence[Curve], metric: str) -> list[BDRow]:
    """One BD-rate row of ours against each anchor."""
    rows = []
    for anchor in anchors:
        value, note, n_a, n_o = bd_rate(anchor, ours, metric)
        rows.append(BDRow(anchor.label, value, metric, note, n_a, n_o))
    return rows


def format_bd_table(rows: Sequence[BDRow]) -> str:
    width = max([len("anchor"), *(len(r.anchor) for r in rows)])
    lines = [f"{'anchor':<{width}}  {'BD-rate %':>9}  {'points':>6}  note"]
    for r in rows:
        lines.append(f"{r.anchor:<{width}}  {r.bd_rate_percent:>9.2f}  "
                     f"{f'{r.anchor_points}/{r.our_points}':>6}  {r.note}")
    return "\n".join(lines)


def write_bd_csv(path: Path, rows: Sequence[BDRow]) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BD_CSV_HEADER)
        for r in rows:
            writer.writerow([r.anchor, f"{r.bd_rate_percent:.4f}", r.metric, r.note])
