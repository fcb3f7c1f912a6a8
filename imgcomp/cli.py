"""`imgcomp COMMAND`: the project's command line. encode|decode|info|models|data: compressed
image files, models and test sets; train|val|plot|codecs|crops|ship|records: the original's
scripts."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

# torch, and all that needs it, is imported by the commands that run a network: `imgcomp
# --help`, `info` and `models` answer at once (tests/test_install.py checks).
from imgcomp.base.arg_types import non_negative_int, positive_float, positive_int
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import CheckpointError
from imgcomp.config.parsing import ConfigError
from imgcomp.entropy_coding import bitstream
from imgcomp.entropy_coding.bitstream import BitstreamError, pixel_limit

COMPRESSED_SUFFIX = ".imgc"
MODEL_HELP = ("a shipped model's name or the authors' label A, B, C (see `imgcomp models`), a "
              "log dir of a trained job (or its ckpts/), or a known job id or fingerprint")


def _sha256_hex(text: str) -> str:
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(f"not a SHA-256 (64 hex digits): {text!r}")
    return text.lower()


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
                       f"or a folder: -o is a folder, receiving NAME{COMPRESSED_SUFFIX} for each. "
                       "An image over the decoder's pixel limit (2^28 pixels, or "
                       "$IMGCOMP_MAX_PIXELS) is refused, as its file would be.")
    _add_model_args(s, f"default: {zoo.DEFAULT_MODEL}")
    s.add_argument("input", nargs="+", metavar="IMAGE", help="image files or folders of images")
    s.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="one image: the compressed file, or a folder (existing, or ending in "
                   f"/) to write NAME{COMPRESSED_SUFFIX} into; several images: a folder, made "
                   "if missing")
    s.add_argument("--refine", type=non_negative_int, default=0, metavar="N",
                   help="encode-time refinement: optimize each image's latent for N steps for "
                   "the model's own objective, for a better image at about the same size (the "
                   "unchanged decoder reads it; 0.7-0.9 s per step for a 768x512 image on 2 "
                   "CPU cores; 20 steps: 32 %% fewer bits for the same MS-SSIM on Kodak; see "
                   "docs/refinement.md). Default 0: none")
    target = s.add_mutually_exclusive_group()
    target.add_argument("--bpp", type=positive_float, metavar="B",
                        help="a budget: each file is at most B bits per pixel (header "
                        "included), as close below as the models allow, found by encoding "
                        "with the shipped models (or -m's alone), each refined at its own rate "
                        "with --refine")
    target.add_argument("--ms_ssim", type=positive_float, metavar="Q",
                        help="a quality floor: the smallest file whose decoded image has an "
                        "MS-SSIM of at least Q, found by encoding with the shipped models "
                        "(or -m's alone), refined at their own rate with --refine")
    s.set_defaults(run=_encode)

    s = sub.add_parser("decode", help="compressed FILE -> IMAGE.png",
                       description="Decompress a file, with the known model (`imgcomp models`) "
                       "whose fingerprint its header carries, or --model.")
    _add_model_args(s, "default: the known model with the file's fingerprint")
    s.add_argument("--max_pixels", type=positive_int, metavar="N",
                   help="refuse files whose image has more than N pixels, against "
                   f"decompression bombs (default: ${bitstream.MAX_PIXELS_ENV} if set, "
                   f"else {bitstream.MAX_PIXELS})")
    s.add_argument("input", metavar="FILE")
    s.add_argument("-o", "--output", required=True, metavar="IMAGE.png",
                   help="the image, in the format its extension names (PNG without one), or a "
                   "folder (existing, or ending in /) to write NAME.png into")
    s.set_defaults(run=_decode)

    s = sub.add_parser("info", help="print a compressed FILE's header",
                       description="Print a compressed file's header: its model (name, or "
                       "fingerprint if no known model has it), image size, latent shape, size.")
    s.add_argument("input", metavar="FILE")
    s.set_defaults(run=_info)

    s = sub.add_parser("models", help="list the known models; download the authors'",
                       description="List the known models: the shipped ones, the authors' "
                       "(the original README's A, B, C), then the log dirs under "
                       f"${zoo.MODELS_PATH_ENV} (os.pathsep-separated folders), the user's "
                       "models folder (imgcomp/models in the user's cache dir) and logs/ "
                       "(train.py's default log dir root).")
    s.add_argument("--download", choices=("authors",),
                   help="authors: download the original's release (ckpts.tar.gz; "
                   "$IMGCOMP_AUTHORS_URL for a mirror) into the first folder of "
                   f"${zoo.MODELS_PATH_ENV}, else the user's models folder, then list")
    s.add_argument("--sha256", type=_sha256_hex, metavar="HEX",
                   help="refuse the download unless its SHA-256 is HEX")
    s.set_defaults(run=_models)

    s = sub.add_parser("data", help="list or download the test sets (Kodak, BSDS500)",
                       description="List the test sets the README measures on and where they "
                       "are; --download fetches them (checked against recorded SHA-256s) "
                       "into $IMGCOMP_DATA, else imgcomp/data in the user's cache dir, where "
                       "the dataset names `kodak` and `bsds500_val` find them when $VAL_ROOT "
                       "does not hold them.")
    s.add_argument("--download", nargs="+", metavar="SET", help="kodak and/or bsds500")
    s.set_defaults(run=_data)


# Subcommands that hand the rest of the command line, unchanged, to the entry point of one of
# the original's scripts (flags and --help exactly the script's): name -> (module, help).
SCRIPT_COMMANDS = {
    "train": ("imgcomp.train.run", "train a model (train.py)"),
    "train-context": ("imgcomp.train.frozen_symbols",
                      "train a context model on a frozen model's symbols (rate only)"),
    "val": ("imgcomp.evaluation.validation",
            "bpp, MS-SSIM, PSNR of trained jobs on images (val.py)"),
    "plot": ("imgcomp.evaluation.plotting", "rate-distortion plot and BD-rates (plotter.py)"),
    "codecs": ("imgcomp.evaluation.baselines",
               "measure JPEG, WebP, JPEG 2000, AVIF (other_codecs.py)"),
    "crops": ("imgcomp.evaluation.crop_figure",
              "one crop: original, model and codecs at about equal bpp"),
    "report": ("imgcomp.evaluation.report",
               "HTML page: RD plots, per-image table, side-by-side viewer"),
    "ship": ("imgcomp.checkpoints.ship", "make log dirs small enough to commit"),
    "convert": ("imgcomp.checkpoints.from_original",
                "an original TensorFlow log dir as a log dir of ours"),
    "records": ("imgcomp.data.records", "write images into TFRecords (mk_img_rec)"),
}


# Modules that build a script command's parser without importing what the script runs
# (torch): `imgcomp COMMAND --help` answers at once, with the script's own help.
SCRIPT_PARSERS = {"train": "imgcomp.train.flags", "train-context": "imgcomp.train.context_flags",
                  "val": "imgcomp.evaluation.validation_flags"}


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


def _os_error(e: OSError) -> int:
    """`error: PATH: problem`, the path as the user gave it."""
    return _error(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))


class OutputError(ValueError):
    """An output path that cannot be written as asked, found before any work."""


def _is_folder(output: str) -> bool:
    """-o names a folder: one that exists, or a path ending in a separator (made if missing),
    as in cwebp/cjxl-style tools."""
    return Path(output).is_dir() or output.endswith(("/", os.sep))


def _folder_to_make(output: str) -> Path | None:
    """The folder -o names, if it is to be made (None if it exists); OutputError if it is a
    file or its parent is missing (one folder is made, not a path of them)."""
    folder = Path(output)
    if folder.is_dir():
        return None
    if folder.exists():
        raise OutputError(f"-o {output} is a file, not a folder")
    if not folder.parent.is_dir():
        raise OutputError(f"cannot make the folder {output}: {folder.parent} does not exist")
    return folder


def _file_output(output: str) -> Path:
    path = Path(output)
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {output}: the folder {path.parent} does not exist")
    return path


def _encode_jobs(inputs: list[str], output: str) -> tuple[list[tuple[Path, Path]], Path | None]:
    """(image, compressed file) pairs, and the output folder to make first (None if none).
    One image file goes to the file `output`, or into it as NAME.imgc if it names a folder
    (_is_folder); several images (several inputs, a folder, a glob) go into the folder
    `output` as NAME.imgc: an existing one, or a new one unless the name is a file's
    (`two.imgc`). OutputError, or DatasetError (no such image, two images to one file)."""
    from imgcomp.base.image_files import DatasetError, resolve_image_paths

    if len(inputs) == 1 and Path(inputs[0]).is_file() and not _is_folder(output):
        return [(Path(inputs[0]), _file_output(output))], None
    images = [path for spec in inputs for path in resolve_image_paths(spec)]
    out = Path(output)
    if not _is_folder(output) and (out.exists() or out.suffix):
        raise OutputError(f"-o {output}: several images need a folder, and this "
                          + ("is a file" if out.exists() else "names a file (to make a folder "
                             "of that name, end it with /)"))
    jobs = [(image, out / (image.stem + COMPRESSED_SUFFIX)) for image in images]
    targets = [target for _, target in jobs]
    clashes = sorted({t.name for t in targets if targets.count(t) > 1})
    if clashes:
        raise DatasetError(f"several images would be written to {out}/{clashes[0]}")
    return jobs, _folder_to_make(output)


def _decoded_path(source: str, output: str) -> tuple[Path, Path | None]:
    """Where decode writes, and the folder to make first (None if none): into the folder
    `output` names (_is_folder) as NAME.png, else to the file `output` in the format its
    extension names (image_format: PNG without one, an unknown one refused: OutputError)."""
    from imgcomp.base.image_files import image_format

    if _is_folder(output):
        return Path(output) / (Path(source).stem + ".png"), _folder_to_make(output)
    path = _file_output(output)
    try:
        image_format(path)
    except ValueError as e:
        raise OutputError(str(e)) from None
    return path, None


def _same_weights_note(matches: list[zoo.KnownModel]) -> str:
    return (f"note: {len(matches)} known models have this fingerprint (identical weights: the "
            "same decoder): " + ", ".join(f"{m.name} ({m.log_dir})" for m in matches)
            + f"; using {matches[0].name}")


def _encode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tqdm import tqdm

    from imgcomp.base.atomic import atomic_write_bytes
    from imgcomp.base.device import select_device
    from imgcomp.base.image_files import DatasetError, ImageReadError, read_image
    from imgcomp.evaluation import rate_control
    from imgcomp.evaluation.refinement import ImageTooLargeError

    device = select_device(args.device)
    failed = 0
    try:
        jobs, folder = _encode_jobs(args.input, args.output)
        candidates = rate_control.load_candidates(args.model, args.step, device,
                                                  choose=bool(args.bpp or args.ms_ssim))
        if folder is not None:
            folder.mkdir(exist_ok=True)
        for source, target in tqdm(jobs, disable=len(jobs) < 2, unit="image"):
            start = time.perf_counter()
            image = read_image(source, max_pixels=pixel_limit())
            try:
                chosen = rate_control.encode_image(image, candidates, args.refine, args.bpp,
                                                   args.ms_ssim, progress=True)
            except (rate_control.RateControlError, ImageTooLargeError) as e:  # none written
                tqdm.write(f"error: {source}: {e}", file=sys.stderr)
                failed += 1
                continue
            atomic_write_bytes(target, chosen.data)
            h, w = image.shape[:2]
            tqdm.write(f"{source} ({w}x{h}) -> {target}: {len(chosen.data)} bytes, "
                       f"{chosen.bpp:.4f} bpp"
                       + (f" (budget {args.bpp:g})" if args.bpp else "")
                       + (f", MS-SSIM {chosen.ms_ssim:.4f} (>= {args.ms_ssim:g})"
                          if args.ms_ssim else "")
                       + f", {chosen.setting}, {time.perf_counter() - start:.2f} s")
    except (CheckpointError, ConfigError, DatasetError, ImageReadError, OutputError) as e:
        return _error(str(e))
    except OSError as e:
        return _os_error(e)
    return 1 if failed else 0


def _decode(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcomp.base.device import select_device
    from imgcomp.base.image_files import ImageReadError, write_image

    device = select_device(args.device)
    try:
        max_pixels = pixel_limit(args.max_pixels)
    except ValueError as e:  # a malformed environment variable
        parser.error(str(e))
    try:
        data = Path(args.input).read_bytes()
        # Parsed and checked once: bad files are refused before any model is looked up.
        header, payload = bitstream.unpack(data, max_pixels)
        target, folder = _decoded_path(args.input, args.output)
        if args.model:
            known = zoo.find(args.model)
        else:
            matches = zoo.find_all_by_fingerprint(header.fingerprint)
            known = matches[0]  # the first in lookup order: the same one every time
            if len(matches) > 1:
                print(_same_weights_note(matches), file=sys.stderr)
        model = zoo.load_model(known, args.step, device)  # the model found, not looked up again
        start = time.perf_counter()
        image = model.decompress_unpacked(header, payload)
        if folder is not None:
            folder.mkdir(exist_ok=True)
        write_image(target, image)
        print(f"{args.input} -> {target} ({image.shape[1]}x{image.shape[0]}, model "
              f"{known.name}), {time.perf_counter() - start:.2f} s")
    except BitstreamError as e:
        return _error(f"{args.input}: {e}")
    except (CheckpointError, ConfigError, ImageReadError, OutputError) as e:
        return _error(str(e))
    except OSError as e:
        return _os_error(e)
    return 0


def _info(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        data = Path(args.input).read_bytes()
        # Any valid header is shown, however large the image it claims.
        header, _ = bitstream.unpack(data, max_pixels=bitstream.MAX_SIDE ** 2)
    except BitstreamError as e:
        return _error(f"{args.input}: {e}")
    except OSError as e:
        return _os_error(e)
    fingerprint = header.fingerprint.hex()
    try:
        first, *others = zoo.find_all_by_fingerprint(header.fingerprint)
        model = f"{first.name} ({fingerprint})" + "".join(
            f", also {m.name} (identical weights)" for m in others)
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


def _print_table(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last one (a path) is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(r, widths, strict=False)),
                         r[-1]]))


def _models(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.sha256 and not args.download:
        parser.error("--sha256 checks a download: give --download authors too")
    if args.download:
        from imgcomp.base.download import DownloadError
        from imgcomp.checkpoints.download import install_authors_models
        try:
            for log_dir in install_authors_models(sha256=args.sha256):
                print(f"installed {log_dir}", file=sys.stderr)
        except (DownloadError, OSError) as e:
            return _error(str(e))
    installed = {m.name: m for m in zoo.shipped_models()}
    rows = [("name", "job id", "fingerprint", "Kodak bpp (estimate) / MS-SSIM", "path")]
    for row in zoo.SHIPPED:
        path = (str(installed[row.name].log_dir) if row.name in installed
                else f"(not installed in {zoo.shipped_models_dir()})")
        rows.append((row.name, row.job_id, row.fingerprint,
                     f"{row.kodak_bpp:.4f} / {row.kodak_ms_ssim:.4f}", path))
    try:
        found = zoo.search_path_models()
        authors = {m.name: m for m in found if m.authors is not None}
        for row in zoo.AUTHORS:  # the original README's numbers
            model = authors.get(row.label)
            rows.append((row.label, row.job_id, model.fingerprint if model else "-",
                         f"{row.kodak_bpp:.3f} / {row.kodak_ms_ssim:.3f} (paper)",
                         str(model.log_dir) if model
                         else "(not installed: imgcomp models --download authors)"))
        rows += [(m.name, m.job_id, m.fingerprint, "-", str(m.log_dir))
                 for m in found if m.authors is None]
    except (CheckpointError, ConfigError) as e:
        return _error(str(e))
    _print_table(rows)
    return 0


def _data(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from imgcomp.base.download import DownloadError
    from imgcomp.base.user_dirs import DATA_DIR_ENV, data_dir
    from imgcomp.data.test_sets import KNOWN_SETS
    unknown = [name for name in args.download or () if name not in KNOWN_SETS]
    if unknown:
        parser.error(f"unknown test set {unknown[0]!r} (known: {', '.join(KNOWN_SETS)})")
    try:
        for name in dict.fromkeys(args.download or ()):
            print(f"{name}: {KNOWN_SETS[name].download(None)}", file=sys.stderr)
    except (DownloadError, OSError) as e:
        return _error(str(e))
    print(f"data folder: {data_dir()} (${DATA_DIR_ENV} chooses another)")
    rows = [("set", "dataset name", "images", "folder")]
    for name, known in KNOWN_SETS.items():
        folder = data_dir() / known.folder
        count = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        rows.append((name, known.dataset_name, str(count), str(folder) if count else
                     f"(not downloaded: imgcomp data --download {name}) {known.what}"))
    _print_table(rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SCRIPT_COMMANDS:
        if argv[0] in SCRIPT_PARSERS and {"-h", "--help"} & set(argv[1:]):
            # The script's own parser prints its help (or usage error) and exits; it returns
            # only if -h is no option there (after --), and the script parses the line itself.
            importlib.import_module(SCRIPT_PARSERS[argv[0]]).build_arg_parser().parse_args(
                argv[1:])
        return importlib.import_module(SCRIPT_COMMANDS[argv[0]][0]).main(argv[1:])
    parser = build_arg_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)
