"""Encode-time refinement measured (docs/refinement.md): tables of val.py --refine results
against the plain ones, and the seconds it takes per image.

    python val.py ckpts JOB_ID kodak --real_bpp --refine N     # each shipped job, each N
    python bench/refinement.py tables [--root ckpts] [--dataset kodak] [--steps 20 100 300]
                                      [--images kodim01.png ...]
    python bench/refinement.py time [--steps 20 100] [--threads 2] [--images 3]
    python bench/refinement.py mobility [--dataset bsds500_val] [--images 3] [--steps 20]
                                        [--beta_factors 0.001 1 4 16]

tables: per shipped model and N, over the images of the refined results: mean real bpp
(header included), MS-SSIM, PSNR and val.py's encode seconds per image (refinement included),
with the plain results (`<JOB_ID> <PLAIN_DATASET>`, default the same dataset) over the same
images as N = 0; then per N the BD-rate (MS-SSIM, real file sizes) of the refined curve (the
shipped models at N) against the plain one. time: seconds to encode each of the first Kodak
images ($KODAK_DIR) with each shipped model, plain and refined, on --threads threads.
mobility: how far refinement can move a model's rate, the question of rate control within a
few % of a budget (docs/refinement.md): each shipped model refined with its beta scaled by each
factor (0.001: the rate left free to grow; 16: pulled down hard), real bpp and MS-SSIM against
the plain file's, per image and in the mean over the first --images images of --dataset.
With --codecs, also the BD-rates of the plain and the refined curves against the classical
codecs' (results/other_codecs/<PLAIN_DATASET>/, all of its images: the refined results must
hold all of them too).
"""

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from imgcomp.base.image_files import read_image, resolve_images
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import ckpt_dir_of, read_configs
from imgcomp.evaluation.plotting import load_codec_curves
from imgcomp.evaluation.quality import ms_ssim_uint8
from imgcomp.evaluation.refinement import refined_symbols
from imgcomp.evaluation.results import (
    MEASURES_CSV,
    REAL_BPP_CSV,
    Curve,
    bd_rate,
    make_curve,
    mean_measures,
    read_bpp_real,
    read_measures_csv,
    results_dir,
    with_real_bpp,
)

ROOT = Path(__file__).resolve().parents[1]


def _encode_seconds(folder: Path) -> dict[str, float]:
    """img_name -> encode_s of a results dir's real_bpp.csv."""
    with open(folder / REAL_BPP_CSV, newline="") as f:
        return {row["img_name"]: float(row["encode_s"]) for row in csv.DictReader(f)}


def _results(root: Path, job: str, dataset: str, steps: int, names: list[str] | None):
    """(mean measures with real bpp, encode s per image, image names) of one results dir,
    restricted to `names` if given."""
    folder = results_dir(root, job, dataset, steps)
    measures = read_measures_csv(folder / MEASURES_CSV)
    if names is not None:
        measures = [m for m in measures if m.img_name in names]
        if len(measures) != len(names):
            raise SystemExit(f"{folder} lacks some of the images {names}")
    measures = with_real_bpp(measures, read_bpp_real(folder / REAL_BPP_CSV), folder)
    seconds = _encode_seconds(folder)
    return (mean_measures(measures), float(np.mean([seconds[m.img_name] for m in measures])),
            [m.img_name for m in measures])


def tables(args: argparse.Namespace) -> None:
    jobs = [(row.name, row.job_id) for row in sorted(zoo.SHIPPED, key=lambda r: r.kodak_bpp)]
    plain_dataset = args.plain_dataset or args.dataset
    print("| model | N | images | bpp (real) | MS-SSIM | PSNR (dB) | encode s/img |")
    print("|---|---|---|---|---|---|---|")
    curves = {}
    for steps in args.steps:
        refined, plain = [], []
        for name, job in jobs:
            folder = results_dir(args.root, job, args.dataset, steps)
            if not (folder / MEASURES_CSV).is_file():
                print(f"| {name} | {steps} | (no {folder.name}) | | | | |")
                continue
            mean, seconds, names = _results(args.root, job, args.dataset, steps, args.images)
            base, base_seconds, _ = _results(args.root, job, plain_dataset, 0, names)
            for n, m, s in ((0, base, base_seconds), (steps, mean, seconds)):
                print(f"| {name} | {n} | {m.num_images} | {m.bpp:.4f} | {m.ms_ssim:.4f} | "
                      f"{m.psnr:.2f} | {s:.1f} |")
            refined.append(mean)
            plain.append(base)
        curves[steps] = plain, refined
    print("\n| N | images | BD-rate of refined vs plain (MS-SSIM, real bpp) | note |")
    print("|---|---|---|---|")
    for steps, (plain, refined) in curves.items():
        if len(refined) < 2:
            continue
        value, note, _, _ = bd_rate(_curve("plain", plain), _curve(f"N={steps}", refined),
                                    "ms-ssim")
        print(f"| {steps} | {refined[0].num_images} | {_percent(value)} | {note} |")
    if args.codecs:
        codecs = load_codec_curves(args.codecs, plain_dataset, "ms-ssim")
        ours = [("plain", next(iter(curves.values()))[0])]
        ours += [(f"N={steps}", refined) for steps, (_, refined) in curves.items()
                 if len(refined) >= 2]
        print("\n| BD-rate (MS-SSIM, real bpp) against | " + " | ".join(n for n, _ in ours)
              + " |")
        print("|---" * (len(ours) + 1) + "|")
        for codec in codecs:
            cells = [_percent(bd_rate(codec, _curve(n, m), "ms-ssim")[0]) for n, m in ours]
            print(f"| {codec.label} | " + " | ".join(cells) + " |")


def _curve(label: str, means: list) -> Curve:
    return make_curve(label, [m.bpp for m in means], [m.ms_ssim for m in means])


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.1f} %"


def timing(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    paths = resolve_images(os.environ.get("KODAK_DIR", "kodak"))[1][:args.images]
    images = [read_image(p) for p in paths]
    print(f"{len(images)} Kodak images, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    for known in sorted(zoo.shipped_models(), key=lambda m: m.shipped.kodak_bpp):
        model = zoo.load_model(known)
        ae_cfg = read_configs(ckpt_dir_of(known.log_dir))[0]
        for steps in [0, *args.steps]:
            start, cpu = time.perf_counter(), time.process_time()
            for image in images:
                symbols = refined_symbols(model, image, ae_cfg, steps)
                model.encode_symbols(symbols, *image.shape[:2])
            wall = (time.perf_counter() - start) / len(images)
            cpu = (time.process_time() - cpu) / len(images)
            print(f"{known.name} N={steps}: {wall:.1f} s per image ({cpu:.1f} s CPU)", flush=True)


def mobility(args: argparse.Namespace) -> None:
    paths = resolve_images(args.dataset)[1][:args.images]
    images = [read_image(p) for p in paths]
    print(f"{args.dataset}: {', '.join(p.name for p in paths)}; N={args.steps}")
    for known in sorted(zoo.shipped_models(), key=lambda m: m.shipped.kodak_bpp):
        model = zoo.load_model(known)
        ae_cfg = read_configs(ckpt_dir_of(known.log_dir))[0]
        rows = {}
        for factor in [None, *args.beta_factors]:
            cfg = ae_cfg if factor is None else type(ae_cfg)(
                {**ae_cfg, "beta": ae_cfg.beta * factor})
            for image in images:
                symbols = refined_symbols(model, image, cfg, 0 if factor is None else args.steps)
                h, w = image.shape[:2]
                data, _ = model.encode_symbols(symbols, h, w)
                decoded = model.reconstruct(symbols, h, w)
                rows.setdefault(factor, []).append(
                    (8 * len(data) / (h * w), ms_ssim_uint8(image, decoded)))
        plain = rows.pop(None)
        print(f"{known.name} plain: bpp {np.mean([b for b, _ in plain]):.4f}, "
              f"MS-SSIM {np.mean([q for _, q in plain]):.4f}")
        for factor, measured in rows.items():
            ratios = [b / p for (b, _), (p, _) in zip(measured, plain, strict=True)]
            print(f"  beta x{factor:g}: bpp {np.mean([b for b, _ in measured]):.4f} "
                  f"({100 * (np.mean(ratios) - 1):+.1f} %, per image "
                  f"{', '.join(f'{100 * (r - 1):+.1f}' for r in ratios)}), "
                  f"MS-SSIM {np.mean([q for _, q in measured]):.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tables")
    t.add_argument("--root", type=Path, default=ROOT / "ckpts")
    t.add_argument("--dataset", default="kodak")
    t.add_argument("--plain_dataset", help="the dataset of the plain results (default: "
                   "--dataset), restricted to the refined results' images")
    t.add_argument("--steps", type=int, nargs="+", default=[20, 100, 300])
    t.add_argument("--images", nargs="+", metavar="NAME",
                   help="only these images (e.g. kodim01.png), to compare N on the same ones")
    t.add_argument("--codecs", type=Path, metavar="ROOT", nargs="?",
                   const=ROOT / "results/other_codecs",
                   help="BD-rates against the classical codecs measured under ROOT")
    t.set_defaults(run=tables)
    s = sub.add_parser("time")
    s.add_argument("--steps", type=int, nargs="+", default=[20])
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--images", type=int, default=3)
    s.set_defaults(run=timing)
    m = sub.add_parser("mobility")
    m.add_argument("--dataset", default="bsds500_val")
    m.add_argument("--images", type=int, default=3)
    m.add_argument("--steps", type=int, default=20)
    m.add_argument("--beta_factors", type=float, nargs="+", default=[0.001, 1, 4, 16])
    m.set_defaults(run=mobility)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
