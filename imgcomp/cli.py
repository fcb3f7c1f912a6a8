"""`imgcomp encode|decode`: compressed image files on the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from imgcomp import bitstream
from imgcomp.api import DEFAULT_JOB, default_model_dir, load_model
from imgcomp.atomic import atomic_write_bytes
from imgcomp.bitstream import BitstreamError, pixel_limit
from imgcomp.checkpoint import CheckpointError
from imgcomp.config import ConfigError
from imgcomp.device import select_device
from imgcomp.imageio import ImageReadError, read_image, write_image


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcomp", description="Compress images to files and back "
                                "with a trained model.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, what, out in (("encode", "IMAGE", "FILE"), ("decode", "FILE", "IMAGE.png")):
        s = sub.add_parser(name, help=f"{what} -> {out}")
        s.add_argument("--model", metavar="JOB_DIR",
                       help="log dir of a trained job (or its ckpts/); default: the shipped "
                       f"model {DEFAULT_JOB} in ckpts/")
        s.add_argument("--step", type=int, default=-1, help="checkpoint step (-1: latest)")
        s.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
        if name == "decode":
            s.add_argument("--max_pixels", type=_positive_int, metavar="N",
                           help="refuse files whose image has more than N pixels, against "
                           f"decompression bombs (default: ${bitstream.MAX_PIXELS_ENV} if set, "
                           f"else {bitstream.MAX_PIXELS})")
        s.add_argument("input", metavar=what)
        s.add_argument("-o", "--output", required=True, metavar=out)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    device = select_device(args.device)
    if args.command == "decode":
        try:
            max_pixels = pixel_limit(args.max_pixels)
        except ValueError as e:  # a malformed environment variable
            parser.error(str(e))
    try:
        model_dir = args.model or default_model_dir()
        model = load_model(model_dir, args.step, device)
        start = time.perf_counter()
        if args.command == "encode":
            image = read_image(args.input)
            data = model.compress(image)
            atomic_write_bytes(args.output, data)
            h, w = image.shape[:2]
            print(f"{args.input} ({w}x{h}) -> {args.output}: {len(data)} bytes, "
                  f"{8 * len(data) / (h * w):.4f} bpp, {time.perf_counter() - start:.2f} s")
        else:
            image = model.decompress(Path(args.input).read_bytes(), max_pixels)
            write_image(args.output, image)
            print(f"{args.input} -> {args.output} ({image.shape[1]}x{image.shape[0]}), "
                  f"{time.perf_counter() - start:.2f} s")
    except BitstreamError as e:
        print(f"error: {args.input}: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, ConfigError, ImageReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
