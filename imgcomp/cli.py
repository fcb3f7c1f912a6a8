"""`imgcomp encode|decode`: compressed image files on the command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

from imgcomp.bitstream import DEFAULT_JOB, BitstreamError, ImageCompressor, default_model_dir
from imgcomp.checkpoint import CheckpointError
from imgcomp.config import ConfigError
from imgcomp.data import ImageReadError, load_image_rgb


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
        s.add_argument("input", metavar=what)
        s.add_argument("-o", "--output", required=True, metavar=out)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    try:
        model_dir = args.model or default_model_dir()
        compressor = ImageCompressor.from_log_dir(model_dir, args.step, args.device)
        start = time.perf_counter()
        if args.command == "encode":
            image = load_image_rgb(args.input)
            data = compressor.compress(image)
            Path(args.output).write_bytes(data)
            h, w = image.shape[:2]
            print(f"{args.input} ({w}x{h}) -> {args.output}: {len(data)} bytes, "
                  f"{8 * len(data) / (h * w):.4f} bpp, {time.perf_counter() - start:.2f} s")
        else:
            image = compressor.decompress(Path(args.input).read_bytes())
            Image.fromarray(image).save(args.output)
            print(f"{args.input} -> {args.output} ({image.shape[1]}x{image.shape[0]}), "
                  f"{time.perf_counter() - start:.2f} s")
    except (BitstreamError, CheckpointError, ConfigError, ImageReadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
