"""val.py: evaluate trained jobs on a set of images (bpp, MS-SSIM, PSNR per image).

Output per job and dataset: `LOG_DIR_ROOT/<JOB_ID> <DATASET>/` with `measures.csv` (the
latest validated checkpoint), `measures_<STEP>.csv` (each validated checkpoint),
`validated.json` (which checkpoints are done, so re-running skips them), with
`--save_ours` the reconstructions in `imgs/`, and with `--real_bpp` the compressed files in
`bitstreams/` and `real_bpp.csv` (real vs cross-entropy bpp, coding times). With `--refine N`
each image's latent is refined for N steps before coding (imgcomp.evaluation.refinement), and
the results go to `<JOB_ID> <DATASET>_refine<N>/`. Every file is written atomically; a folder
that cannot be written stops the run with one line naming it.

Images are read one at a time, when measured. An unreadable one is named, skipped, and
listed again at the end, and val.py exits with EXIT_UNREADABLE: the others' measures are
written, but the checkpoint is not marked validated. measures_<STEP>.csv (and
real_bpp_<STEP>.csv) hold the images measured so far, so a re-run measures only the missing
images and then writes the complete CSVs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from imgcomp.base.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from imgcomp.base.device import select_device
from imgcomp.base.distributed import (
    World,
    any_rank,
    barrier,
    close_world,
    gather_to_main,
    init_world,
)
from imgcomp.base.image_files import (
    DatasetError,
    ImageReadError,
    read_image,
    resolve_images,
    write_image,
)
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config
from imgcomp.entropy_coding.bitstream import BitstreamError
from imgcomp.evaluation.refinement import refined_symbols
from imgcomp.evaluation.results import (
    BITSTREAMS_DIR,
    MEASURES_CSV,
    REAL_BPP_CSV,
    RECONSTRUCTIONS_DIR,
    Measure,
    mean_measures,
    measure,
    read_measures_csv,
    results_dir,
    step_csv,
    write_measures_csv,
)
from imgcomp.evaluation.validation_flags import EXIT_UNREADABLE, build_arg_parser

VALIDATED_JSON = "validated.json"
REAL_BPP_HEADER = ("img_name", "bpp_real", "bpp_theory", "bpp_loss", "encode_s", "decode_s")
# One image's results: its measures.csv row and, with --real_bpp, its real_bpp.csv row.
ImageResult = tuple[Measure, dict | None]


class OutputError(Exception):
    """An output file or folder cannot be written (read-only or full disk, ...)."""


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


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` as an OutputError naming it (an atomic write's own
    error names its temporary file, or no file at all)."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e


class ImageReader:
    """val.py's images, read when measured, one at a time (none is kept). An unreadable one
    is named once, in one line, and skipped from then on; a non-RGB one gets a note, once."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.unreadable: dict[int, str] = {}  # index in paths -> why
        self._noted: set[int] = set()

    def read(self, i: int) -> np.ndarray | None:
        if i in self.unreadable:
            return None
        try:
            image = read_image(self.paths[i])
        except ImageReadError as e:
            self.unreadable[i] = str(e)
            tqdm.write(f"warning: {e}; skipped", file=sys.stderr)
            return None
        if i not in self._noted:
            self._noted.add(i)
            note = _image_mode_note(self.paths[i])
            if note:
                tqdm.write(note)
        return image


def _image_mode_note(path: Path) -> str | None:
    with Image.open(path) as img:
        if img.mode == "RGB":
            return None
        return f"note: {path.name} is {img.mode} ({img.format}); evaluated as 8-bit RGB"


def _read_validated(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ckpt.CheckpointError(f"{path} is corrupt ({e}); re-run with --reset") from e


def validate_job(log_dir_root: Path, job_id: str, dataset: str, reader: ImageReader,
                 args: argparse.Namespace, device: torch.device, world: World) -> None:
    """Validate the selected checkpoints of one job. Under torchrun every rank takes every
    world_size-th image (always the same ones, so each rank names its own unreadable images)
    and rank 0 writes the results in the single-process order."""
    log = print if world.is_main else _silent
    log_dir = ckpt.find_log_dir(log_dir_root, job_id)
    ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
    available = [s for s, _ in ckpt.list_checkpoints(ckpt_dir)]
    if not available:
        raise ckpt.CheckpointError(f"job {job_id}: no checkpoints in {ckpt_dir}")
    out_dir = results_dir(log_dir_root, job_id, dataset, args.refine)
    ae_cfg = ckpt.read_configs(ckpt_dir)[0] if args.refine else None
    if world.is_main and args.reset and out_dir.exists():
        with _writing(out_dir):
            shutil.rmtree(out_dir)
    barrier(world)
    with _writing(out_dir):
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
    paths = reader.paths
    for step in todo:
        # Every rank reads what earlier runs measured (rank 0 writes only after the gather).
        done = _measured_before(out_dir, step, args.real_bpp)
        pending = [i for i, p in enumerate(paths) if p.name not in done]
        if len(pending) < len(paths):
            log(f"{job_id} step {step}: {len(paths) - len(pending)} of {len(paths)} images "
                "measured by an earlier run"
                + (f"; measuring the other {len(pending)}" if pending else ""))
        mine = [i for i in pending if i % world.world_size == world.rank]
        model = None  # loaded for the first readable image
        results = []
        for i in tqdm(mine, desc=f"{job_id} step {step}", unit="img", disable=not world.is_main):
            image = reader.read(i)
            if image is None:
                continue
            if model is None:
                model = ckpt.load_codec(ckpt_dir, step, device)
            save_png = args.save_ours and step == steps[-1]
            results.append((i, measure_image(model, paths[i], image, out_dir, save_png,
                                             args.real_bpp, args.refine, ae_cfg)))
        gathered = gather_to_main(results, world)
        if gathered is None:
            continue
        new = {paths[i].name: result for rank_results in gathered for i, result in rank_results}
        measured = {**done, **new}
        ordered = [measured[p.name] for p in paths if p.name in measured]
        missing = len(paths) - len(ordered)
        means = _write_results(out_dir, step, step == max(steps), ordered) if ordered else None
        if not missing:
            validated[str(step)] = means
            with _writing(validated_path):
                atomic_write_text(validated_path, json.dumps(validated, indent=1,
                                                             sort_keys=True))
            print(f"{job_id} step {step} on {dataset}: {_means_line(means)}  -> {out_dir}")
        else:
            print(f"{job_id} step {step} on {dataset}: {missing} of {len(paths)} images "
                  f"unreadable, not marked as validated (a re-run measures only those)"
                  + (f"; {_means_line(means)}  -> {out_dir}" if means else ""))


def _silent(*args, **kwargs) -> None:
    pass


def measure_image(model: ImageCodec, path: Path, image: np.ndarray, out_dir: Path,
                  save_png: bool, real_bpp: bool, refine: int = 0,
                  ae_cfg: Config | None = None) -> ImageResult:
    """The measures of one image (saving its reconstruction in imgs/ if `save_png`) and,
    with `real_bpp`, its real compressed file's real_bpp.csv row; with `refine` steps of
    encode-time refinement for the model's objective (its ae config `ae_cfg`)."""
    start = time.perf_counter()
    symbols = refined_symbols(model, image, ae_cfg, refine)
    symbols_s = time.perf_counter() - start
    x_hat, bits = model.reconstruct(symbols, *image.shape[:2]), model.bits(symbols)
    measured = Measure(path.name, *measure(image, x_hat, bits))
    if save_png:
        png = out_dir / RECONSTRUCTIONS_DIR / f"{path.stem}.png"
        with _writing(png):
            png.parent.mkdir(exist_ok=True)
            write_image(png, x_hat)
    if not real_bpp:
        return measured, None
    real = code_image(model, path, symbols, image.shape[:2], bits, symbols_s, out_dir)
    tqdm.write(_real_line(real))
    return measured, real


def code_image(model: ImageCodec, path: Path, symbols: torch.Tensor, size: tuple[int, int],
               loss_bits: float, symbols_s: float, out_dir: Path) -> dict:
    """Encode an image's symbols to a real file, decode it, check the symbols; its
    real_bpp.csv row. encode_s (image -> file) includes `symbols_s`, the autoencoder's time
    (and refinement's)."""
    h, w = size
    start = time.perf_counter()
    data, theory_bits = model.encode_symbols(symbols, h, w)
    encode_s = symbols_s + time.perf_counter() - start
    stream = out_dir / BITSTREAMS_DIR / f"{path.stem}.imgc"
    with _writing(stream):
        stream.parent.mkdir(exist_ok=True)
        atomic_write_bytes(stream, data)
    start = time.perf_counter()
    # The file was just written from an image val.py read: no pixel limit (a bomb guard).
    header, decoded = model.decode_symbols(data, max_pixels=h * w)
    model.reconstruct(decoded, header.height, header.width)
    decode_s = time.perf_counter() - start
    if not torch.equal(decoded, symbols):
        raise BitstreamError(f"{path.name}: decoded symbols differ from the encoded ones "
                             f"({int((decoded != symbols).sum())} of {symbols.numel()})")
    return {"img_name": path.name, "bpp_real": 8 * len(data) / (h * w),
            "bpp_theory": theory_bits / (h * w), "bpp_loss": loss_bits / (h * w),
            "encode_s": encode_s, "decode_s": decode_s}


def _measured_before(out_dir: Path, step: int, real_bpp: bool) -> dict[str, ImageResult]:
    """The images of `step` measured by earlier runs: the rows of measures_<STEP>.csv (with
    `real_bpp`, only those that have a real_bpp_<STEP>.csv row too)."""
    measures_path = out_dir / step_csv(MEASURES_CSV, step)
    real_path = out_dir / step_csv(REAL_BPP_CSV, step)
    if not measures_path.is_file():
        return {}
    measures = {m.img_name: m for m in read_measures_csv(measures_path)}
    if not real_bpp:
        return {name: (m, None) for name, m in measures.items()}
    real = _read_real_bpp_csv(real_path) if real_path.is_file() else {}
    return {name: (m, real[name]) for name, m in measures.items() if name in real}


def _write_results(out_dir: Path, step: int, is_last: bool, results: list[ImageResult]) -> dict:
    """Write the step's CSVs (and measures.csv / real_bpp.csv for the last step); the means
    that validated.json records."""
    measures = [m for m, _ in results]
    real_rows = [r for _, r in results if r is not None]
    names = [step_csv(MEASURES_CSV, step)] + ([MEASURES_CSV] if is_last else [])
    for name in names:
        with _writing(out_dir / name):
            write_measures_csv(out_dir / name, measures)
    means = dataclasses.asdict(mean_measures(measures))  # num_images, bpp, ms_ssim, psnr
    if real_rows:
        for name in [step_csv(REAL_BPP_CSV, step)] + ([REAL_BPP_CSV] if is_last else []):
            with _writing(out_dir / name):
                _write_real_bpp_csv(out_dir / name, real_rows)
        for key in REAL_BPP_HEADER[1:]:
            means[key] = float(np.mean([r[key] for r in real_rows]))
    return means


def _real_line(row: dict) -> str:
    return (f"{row['img_name']}: real bpp={row['bpp_real']:.4f} theoretical={row['bpp_theory']:.4f}"
            f" (real/theoretical={row['bpp_real'] / row['bpp_theory']:.4f}) "
            f"loss bpp={row['bpp_loss']:.4f}; encode {row['encode_s']:.2f} s, "
            f"decode {row['decode_s']:.2f} s")


def _write_real_bpp_csv(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=REAL_BPP_HEADER)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v if k == "img_name" else f"{v:.6f}") for k, v in row.items()})


def _read_real_bpp_csv(path: Path) -> dict[str, dict]:
    """img_name -> row of a real_bpp.csv; ValueError naming the file if it is not one."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != REAL_BPP_HEADER:
            raise ValueError(f"{path}: not a real_bpp.csv (header must be "
                             f"{','.join(REAL_BPP_HEADER)}); --reset to start over")
        try:
            return {row["img_name"]: {k: (v if k == "img_name" else float(v))
                                      for k, v in row.items()} for row in reader}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed row: {e}; --reset to start over") from e


def _means_line(means: dict) -> str:
    line = (f"{means['num_images']} images, mean bpp={means['bpp']:.4f} "
            f"ms-ssim={means['ms_ssim']:.4f} psnr={means['psnr']:.2f}")
    if "bpp_real" in means:
        line += (f"; real bpp={means['bpp_real']:.4f} theoretical={means['bpp_theory']:.4f} "
                 f"(real/theoretical={means['bpp_real'] / means['bpp_theory']:.4f}), "
                 f"encode {means['encode_s']:.2f} s, decode {means['decode_s']:.2f} s per image")
    return line


def _report_unreadable(reader: ImageReader, world: World, device: torch.device) -> bool:
    """List every rank's unreadable images again, in one line on rank 0; True on every rank
    if there were any."""
    gathered = gather_to_main(reader.unreadable, world)
    if gathered is not None:
        unreadable = sorted({i for rank_unreadable in gathered for i in rank_unreadable})
        if unreadable:
            print(f"error: {len(unreadable)} unreadable image(s) not measured: "
                  + ", ".join(str(reader.paths[i]) for i in unreadable)
                  + "; the other images' measures are written, and a re-run measures only "
                  "the missing ones", file=sys.stderr)
    # torchrun stops the other ranks as soon as one exits non-zero.
    sys.stdout.flush()
    sys.stderr.flush()
    return any_rank(bool(reader.unreadable), world, device)


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    world, device = init_world(select_device(args.device))
    finished = False
    try:
        dataset, paths = resolve_images(args.images)
        if args.how_many is not None:
            paths = paths[:args.how_many]
        if args.image_cache_max is not None and world.is_main:
            print("note: --image_cache_max is ignored: each image is read when it is "
                  "measured, and none is kept")
        reader = ImageReader(paths)
        for job_id in [j.strip() for j in args.job_ids.replace(";", ",").split(",")
                       if j.strip()]:
            validate_job(Path(args.log_dir_root), job_id, dataset, reader, args, device, world)
        any_unreadable = _report_unreadable(reader, world, device)
        finished = True
    except (DatasetError, ckpt.CheckpointError, OutputError, ValueError) as e:
        # BitstreamError and ConfigError are ValueErrors too.
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        close_world(world, finished)
    return EXIT_UNREADABLE if any_unreadable else 0
