"""`imgcomp COMMAND`: the project's command line. encode|decode|info|models: compressed
image files and models; train|val|plot|codecs|crops|ship|records: the original's scripts."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from tqdm import tqdm

from imgcomp.api import DEFAULT_MODEL, load_model
from imgcomp.base.atomic import atomic_write_bytes
from imgcomp.base.device import select_device
from imgcomp.base.image_files import (
    DatasetError,
    ImageReadError,
    read_image,
    resolve_image_paths,
    write_image,
)
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import CheckpointError
from imgcomp.config.parsing import ConfigError
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import BitstreamError, pixel_limit

COMPRESSED_SUFFIX = ".imgc"
MODEL_HELP = ("a shipped model's name (see `imgcomp models`), a log dir of a trained job (or its "
              "ckpts/), or a known job id or fingerprint")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_model_args(s: argparse.ArgumentParser, default_help: str) -> None:
    s.add_argument("-m", "--model", metavar="NAME_OR_DIR", help=f"{MODEL_HELP}; {default_help}")
    s.add_argument("--step", type=int, default=-1,
                   help="checkpoint step of the model's log dir (-1: latest)")
    s.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="where the networks run (default: cpu; auto: CUDA when present). "
                   "A file decodes on any device, whichever encoded it")


def _add_codec_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("encode", help="IMAGE... -> compressed FILE(s)",
                       description="Compress images. One image: -o is the file; several images "
                       f"or a folder: -o is a folder, receiving NAME{COMPRESSED_SUFFIX} for each.")
    _add_model_args(s, f"default: {DEFAULT_MODEL}")
    s.add_argument("input", nargs="+", metavar="IMAGE", help="image files or folders of images")
    s.add_argument("-o", "--output", required=True, metavar="OUT")
    s.set_defaults(run=_encode)

    s = sub.add_parser("decode", help="compressed FILE -> IMAGE.png",
                       description="Decompress a file, with the known model (`imgcomp models`) "
                       "whose fingerprint its header carries, or --model.")
    _add_model_args(s, "default: the known model with the file's fingerprint")
    s.add_argument("--max_pixels", type=_positive_int, metavar="N",
                   help="refuse files whose image has more than N pixels, against "
                   f"decompression bombs (default: ${bitstream.MAX_PIXELS_ENV} if set, "
                   f"else {bitstream.MAX_PIXELS})")
    s.add_argument("input", metavar="FILE")
    s.add_argument("-o", "--output", required=True, metavar="IMAGE.png")
    s.set_defaults(run=_decode)

    s = sub.add_parser("info", help="print a compressed FILE's header",
                       description="Print a compressed file's header: its model (name, or "
                       "fingerprint if no known model has it), image size, latent shape, size.")
    s.add_argument("input", metavar="FILE")
    s.set_defaults(run=_info)

    s = sub.add_parser("models", help="list the known models",
                       description="List the known models: the shipped ones, then the log dirs "
                       f"under ${zoo.MODELS_PATH_ENV} (os.pathsep-separated folders).")
    s.set_defaults(run=_models)


# Subcommands that hand the rest of the command line, unchanged, to the entry point of one of
# the original's scripts (flags and --help exactly the script's): name -> (module, help).
SCRIPT_COMMANDS = {
    "train": ("imgcomp.train.run", "train a model (train.py)"),
    "val": ("imgcomp.evaluation.validation",
            "bpp, MS-SSIM, PSNR of trained jobs on images (val.py)"),
    "plot": ("imgcomp.evaluation.plotting", "rate-distortion plot and BD-rates (plotter.py)"),
    "codecs": ("imgcomp.evaluation.baselines",
               "measure JPEG, WebP, JPEG 2000, AVIF (other_codecs.py)"),
    "crops": ("imgcomp.evaluation.crop_figure",
              "one crop: original, model and codecs at about equal bpp"),
    "ship": ("imgcomp.checkpoints.ship", "make log dirs small enough to commit"),
    "convert": ("imgcomp.checkpoints.from_original",
                "an original TensorFlow log dir as a log dir of ours"),
    "records": ("imgcomp.data.records", "write images into TFRecords (mk_img_rec)"),
}


def _add_script_commands(sub: argparse._SubParsersAction) -> None:
    """List SCRIPT_COMMANDS in `imgcomp --help`; main() runs them before parsing."""
    for name, (_, what) in SCRIPT_COMMANDS.items():
        sub.add_parser(name, help=what, add_help=False).add_argument(
            "args", nargs=argparse.REMAINDER)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcomp", description="Compress images to files and back "
                                "with a trained model; train and evaluate models. "
                                "`imgcomp COMMAND --help` describes each command.")
    sub = p.add_subparsers(dest="command", required=True)
    _add_script_commands(sub)
    _add_codec_commands(sub)
    return p


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _encode_jobs(inputs: list[str], output: str) -> list[tuple[Path, Path]]:
    """(image, compressed file) pairs: one file to `output`, else each image to
    `output`/NAME.imgc (DatasetError if two images would write the same file)."""
    if len(inputs) == 1 and Path(inputs[0]).is_file() and not Path(output).is_dir():
        return [(Path(inputs[0]), Path(output))]
    images = [path for spec in inputs for path in resolve_image_paths(spec)]
    out = Path(output)
    jobs = [(image, out / (image.stem + COMPRESSED_SUFFIX)) for image in images]
    targets = [target for _, target in jobs]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise DatasetError(f"several images would be written to {out}/{clashes[0]}")
    out.mkdir(parents=True, exist_ok=True)
    return jobs


def _encode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = select_device(args.device)
    try:
        jobs = _encode_jobs(args.input, args.output)
        model = load_model(args.model or DEFAULT_MODEL, args.step, device)
        for source, target in tqdm(jobs, disable=len(jobs) < 2, unit="image"):
            start = time.perf_counter()
            image = read_image(source)
            data = model.compress(image)
            atomic_write_bytes(target, data)
            h, w = image.shape[:2]
            tqdm.write(f"{source} ({w}x{h}) -> {target}: {len(data)} bytes, "
                       f"{8 * len(data) / (h * w):.4f} bpp, {time.perf_counter() - start:.2f} s")
    except (CheckpointError, ConfigError, DatasetError, ImageReadError, OSError) as e:
        return _error(str(e))
    return 0


def _decode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = select_device(args.device)
    try:
        max_pixels = pixel_limit(args.max_pixels)
    except ValueError as e:  # a malformed environment variable
        parser.error(str(e))
    try:
        data = Path(args.input).read_bytes()
        # Parsed and checked once: bad files are refused before any model is looked up.
        header, payload = bitstream.unpack(data, max_pixels)
        known = (zoo.find(args.model) if args.model
                 else zoo.find_by_fingerprint(header.fingerprint))
        model = load_model(known, args.step, device)  # the model found, not looked up again
        start = time.perf_counter()
        image = model.decompress_unpacked(header, payload)
        write_image(args.output, image)
        print(f"{args.input} -> {args.output} ({image.shape[1]}x{image.shape[0]}, model "
              f"{known.name}), {time.perf_counter() - start:.2f} s")
    except BitstreamError as e:
        return _error(f"{args.input}: {e}")
    except (CheckpointError, ConfigError, ImageReadError, OSError) as e:
        return _error(str(e))
    return 0


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        data = Path(args.input).read_bytes()
        # Any valid header is shown, however large the image it claims.
        header, _ = bitstream.unpack(data, max_pixels=bitstream.MAX_SIDE ** 2)
    except BitstreamError as e:
        return _error(f"{args.input}: {e}")
    except OSError as e:
        return _error(str(e))
    fingerprint = header.fingerprint.hex()
    try:
        model = f"{zoo.find_by_fingerprint(header.fingerprint).name} ({fingerprint})"
    except zoo.UnknownModelError:
        model = f"unknown, fingerprint {fingerprint}"
    except (CheckpointError, ConfigError) as e:  # an unreadable log dir in $IMGCOMP_MODELS
        return _error(str(e))
    c, h, w = header.latent_shape
    print(f"file: {args.input}\n"
          f"model: {model}\n"
          f"image: {header.width}x{header.height}\n"
          f"latent: {c}x{h}x{w}\n"
          f"size: {len(data)} bytes ({bitstream.HEADER_BYTES} header)\n"
          f"bpp: {8 * len(data) / (header.width * header.height):.4f}")
    return 0


def _models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    installed = {m.name: m for m in zoo.shipped_models()}
    rows = [("name", "job id", "fingerprint", "Kodak bpp (estimate) / MS-SSIM", "path")]
    for row in zoo.SHIPPED:
        path = (str(installed[row.name].log_dir) if row.name in installed
                else f"(not installed in {zoo.shipped_models_dir()})")
        rows.append((row.name, row.job_id, row.fingerprint,
                     f"{row.kodak_bpp:.4f} / {row.kodak_ms_ssim:.4f}", path))
    try:
        rows += [(m.name, m.job_id, m.fingerprint, "-", str(m.log_dir))
                 for m in zoo.search_path_models()]
    except (CheckpointError, ConfigError) as e:
        return _error(str(e))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(r, widths, strict=False)),
                         r[-1]]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPT_COMMANDS:
        return importlib.import_module(SCRIPT_COMMANDS[argv[0]][0]).main(argv[1:])
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)
