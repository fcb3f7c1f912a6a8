"""val.py: evaluate trained jobs on a set of images (bpp, MS-SSIM, PSNR per image).

Output per job and dataset: `LOG_DIR_ROOT/<JOB_ID> <DATASET>/` with `measures.csv` (the
latest validated checkpoint), `measures_<STEP>.csv` (each validated checkpoint),
`validated.json` (which checkpoints are done, so re-running skips them), with
`--save_ours` the reconstructions in `imgs/`, and with `--real_bpp` the compressed files in
`bitstreams/` and `real_bpp.csv` (real vs cross-entropy bpp, coding times).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imgcomp import checkpoint as ckpt
from imgcomp.bitstream import BitstreamError
from imgcomp.device import select_device
from imgcomp.distributed import World, barrier, close_world, gather_to_main, init_world
from imgcomp.imageio import (
    DatasetError,
    ImageReadError,
    read_image,
    resolve_images,
    write_image,
)
from imgcomp.measures import Measure, mean_measures, measure, write_measures_csv
from imgcomp.model import ImageCodec

VALIDATED_JSON = "validated.json"
REAL_BPP_HEADER = ("img_name", "bpp_real", "bpp_theory", "bpp_loss", "encode_s", "decode_s")


def build_arg_parser() -> argparse.ArgumentParser:
    """The original val.py's flags (names, short forms, defaults) and the port's --device.
    Unknown flags are an error (the original printed "Unknown flags: ..." and went on)."""
    p = argparse.ArgumentParser(prog="val.py", description="Evaluate trained jobs: bpp, "
                                "MS-SSIM and PSNR per image, written to measures.csv.")
    p.add_argument("log_dir_root", help="folder holding the jobs' log dirs")
    p.add_argument("job_ids", help="comma-separated job ids (MMDD_HHMM prefixes; ';' "
                   "separates them too)")
    p.add_argument("images", help="a folder of images, a quoted glob, 'kodak' "
                   "($VAL_ROOT/kodak/*.png) or 'samples' (photos bundled with scikit-image)")
    p.add_argument("--save_ours", "-o", action="store_true",
                   help="save the last validated checkpoint's reconstructions as PNG in "
                   "<out>/imgs/")
    p.add_argument("--how_many", type=int, metavar="N", help="only the first N images")
    p.add_argument("--image_cache_max", "-cache", type=int, metavar="MB",
                   help="accepted and ignored: the original cached decoded images up to MB "
                   "(default 500); this port decodes every image once, up front, and keeps "
                   "them all in memory")
    p.add_argument("--restore_itr", "-i", type=int, metavar="STEP",
                   help="validate only the latest checkpoint with step <= STEP (-1: the "
                   "latest); overrides --ckpt_step")
    p.add_argument("--ckpt_step", "-s", type=int, default=2, metavar="S",
                   help="validate every S-th checkpoint plus the last (default 2; 1: all; "
                   "-1: only the last)")
    p.add_argument("--reset", action="store_true",
                   help="forget which checkpoints were validated and start over")
    p.add_argument("--real_bpp", action="store_true",
                   help="write real compressed files (bitstreams/), decode and check them, "
                   "and report real vs estimated bpp in real_bpp.csv")
    port = p.add_argument_group("flags of the port only")
    port.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def select_steps(available: list[int], ckpt_step: int, restore_itr: int | None) -> list[int]:
    """Which checkpoint steps to validate (see --ckpt_step, --restore_itr): every
    ckpt_step-th plus the last (negative: the last only), or the latest <= restore_itr."""
    if restore_itr is not None:
        if restore_itr == -1:
            return available[-1:]
        eligible = [s for s in available if s <= restore_itr]
        if not eligible:
            raise ckpt.CheckpointError(f"no checkpoint of step <= {restore_itr}; available: "
                                       + ", ".join(map(str, available)))
        return eligible[-1:]
    if ckpt_step < 0:
        return available[-1:]
    if ckpt_step == 0:
        raise ValueError("--ckpt_step must be >= 1, or negative for the last checkpoint only")
    return sorted(set(available[::ckpt_step]) | {available[-1]})


def _image_mode_note(path: Path) -> str | None:
    with Image.open(path) as img:
        if img.mode == "RGB":
            return None
        return f"note: {path.name} is {img.mode} ({img.format}); evaluated as 8-bit RGB"


def load_images(paths: list[Path], note: bool = True) -> list[np.ndarray]:
    """Decode every image up front, so a bad file stops val.py (on every rank) before any
    work is done."""
    images = []
    for path in paths:
        images.append(read_image(path))
        message = _image_mode_note(path) if note else None
        if message:
            print(message)
    return images


def _read_validated(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ckpt.CheckpointError(f"{path} is corrupt ({e}); re-run with --reset") from e


def validate_job(log_dir_root: Path, job_id: str, dataset: str, paths: list[Path],
                 images: list[np.ndarray], args: argparse.Namespace,
                 device: torch.device, world: World) -> None:
    """Validate the selected checkpoints of one job. Under torchrun every rank takes every
    world_size-th image and rank 0 writes the results in the single-process order."""
    log = print if world.is_main else _silent
    log_dir = ckpt.find_log_dir(log_dir_root, job_id)
    ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
    available = [s for s, _ in ckpt.list_checkpoints(ckpt_dir)]
    if not available:
        raise ckpt.CheckpointError(f"job {job_id}: no checkpoints in {ckpt_dir}")
    out_dir = log_dir_root / f"{job_id} {dataset}"
    if world.is_main and args.reset and out_dir.exists():
        shutil.rmtree(out_dir)
    barrier(world)
    out_dir.mkdir(parents=True, exist_ok=True)
    validated_path = out_dir / VALIDATED_JSON
    validated = _read_validated(validated_path)
    steps = select_steps(available, args.ckpt_step, args.restore_itr)
    todo = [s for s in steps if str(s) not in validated
            or (args.real_bpp and "bpp_real" not in validated[str(s)])]
    for s in steps:
        if s not in todo:
            log(f"{job_id} step {s}: already validated on {dataset} "
                f"({_means_line(validated[str(s)])}); --reset to redo")
    mine = list(range(world.rank, len(paths), world.world_size))
    for step in todo:
        model = ckpt.load_codec(ckpt_dir, step, device)
        results = []
        for i in tqdm(mine, desc=f"{job_id} step {step}", unit="img", disable=not world.is_main):
            path, image = paths[i], images[i]
            symbols = model.symbols(image)
            x_hat, bits = model.reconstruct(symbols, *image.shape[:2]), model.bits(symbols)
            measured = Measure(path.name, *measure(image, x_hat, bits))
            if args.save_ours and step == steps[-1]:
                (out_dir / "imgs").mkdir(exist_ok=True)
                write_image(out_dir / "imgs" / f"{path.stem}.png", x_hat)
            real = None
            if args.real_bpp:
                real = code_image(model, path, image, bits, out_dir)
                tqdm.write(_real_line(real))
            results.append((i, measured, real))
        gathered = gather_to_main(results, world)
        if gathered is None:
            continue
        ordered = sorted((r for rank_results in gathered for r in rank_results),
                         key=lambda r: r[0])
        _write_results(out_dir, step, max(steps), [r[1] for r in ordered],
                       [r[2] for r in ordered if r[2] is not None], validated)
        validated_path.write_text(json.dumps(validated, indent=1, sort_keys=True))
        print(f"{job_id} step {step} on {dataset}: {_means_line(validated[str(step)])}  -> "
              f"{out_dir}")


def _silent(*args, **kwargs) -> None:
    pass


def _write_results(out_dir: Path, step: int, last_step: int, measures: list[Measure],
                   real_rows: list[dict], validated: dict) -> None:
    write_measures_csv(out_dir / f"measures_{step}.csv", measures)
    if step == last_step:
        write_measures_csv(out_dir / "measures.csv", measures)
    means = dataclasses.asdict(mean_measures(measures))  # num_images, bpp, ms_ssim, psnr
    if real_rows:
        _write_real_bpp_csv(out_dir / f"real_bpp_{step}.csv", real_rows)
        if step == last_step:
            _write_real_bpp_csv(out_dir / "real_bpp.csv", real_rows)
        for key in REAL_BPP_HEADER[1:]:
            means[key] = float(np.mean([r[key] for r in real_rows]))
    validated[str(step)] = means


def code_image(model: ImageCodec, path: Path, image: np.ndarray, loss_bits: float,
               out_dir: Path) -> dict:
    """Encode an image to a real file, decode it, check the symbols; its real_bpp.csv row."""
    h, w = image.shape[:2]
    start = time.perf_counter()
    symbols = model.symbols(image)
    data, theory_bits = model.encode_symbols(symbols, h, w)
    encode_s = time.perf_counter() - start
    stream_dir = out_dir / "bitstreams"
    stream_dir.mkdir(exist_ok=True)
    (stream_dir / f"{path.stem}.imgc").write_bytes(data)
    start = time.perf_counter()
    header, decoded = model.decode_symbols(data)
    model.reconstruct(decoded, header.height, header.width)
    decode_s = time.perf_counter() - start
    if not torch.equal(decoded, symbols):
        raise BitstreamError(f"{path.name}: decoded symbols differ from the encoded ones "
                             f"({int((decoded != symbols).sum())} of {symbols.numel()})")
    return {"img_name": path.name, "bpp_real": 8 * len(data) / (h * w),
            "bpp_theory": theory_bits / (h * w), "bpp_loss": loss_bits / (h * w),
            "encode_s": encode_s, "decode_s": decode_s}


def _real_line(row: dict) -> str:
    return (f"{row['img_name']}: real bpp={row['bpp_real']:.4f} theoretical={row['bpp_theory']:.4f}"
            f" (real/theoretical={row['bpp_real'] / row['bpp_theory']:.4f}) "
            f"loss bpp={row['bpp_loss']:.4f}; encode {row['encode_s']:.2f} s, "
            f"decode {row['decode_s']:.2f} s")


def _write_real_bpp_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REAL_BPP_HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v if k == "img_name" else f"{v:.6f}") for k, v in row.items()})


def _means_line(means: dict) -> str:
    line = (f"{means['num_images']} images, mean bpp={means['bpp']:.4f} "
            f"ms-ssim={means['ms_ssim']:.4f} psnr={means['psnr']:.2f}")
    if "bpp_real" in means:
        line += (f"; real bpp={means['bpp_real']:.4f} theoretical={means['bpp_theory']:.4f} "
                 f"(real/theoretical={means['bpp_real'] / means['bpp_theory']:.4f}), "
                 f"encode {means['encode_s']:.2f} s, decode {means['decode_s']:.2f} s per image")
    return line


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    world, device = init_world(select_device(args.device))
    finished = False
    try:
        dataset, paths = resolve_images(args.images)
        if args.how_many is not None:
            paths = paths[:args.how_many]
        images = load_images(paths, note=world.is_main)
        if args.image_cache_max is not None and world.is_main:
            print("note: --image_cache_max is ignored: all images are decoded once and kept "
                  "in memory")
        for job_id in [j.strip() for j in args.job_ids.replace(";", ",").split(",")
                       if j.strip()]:
            validate_job(Path(args.log_dir_root), job_id, dataset, paths, images, args, device,
                         world)
        finished = True
    except (DatasetError, ImageReadError, ckpt.CheckpointError, ValueError) as e:
        # BitstreamError and ConfigError are ValueErrors too.
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        close_world(world, finished)
    return 0
