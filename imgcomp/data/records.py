"""Write image files into TFRecords (replaces fjcommon's ``mk_img_rec``).

    python -m imgcomp.data.records mk_img_rec FILES... -o OUT.tfrecord [--feature_key image/encoded]
        [--assert_size LENGTH] [--resize_short_side 256] [--workers N]
    python -m imgcomp.data.records mk_img_rec FILES... -o OUT_DIR --shard_size 1250 [--prefix P] ...
    python -m imgcomp.data.records mk_img_rec FILES... -o OUT_DIR [--num_per_shard 1000]
        [--prefix shard] ...

As the original (`python -m fjcommon tf_records mk_img_rec FILES -o OUTPUT_PATH`), `-o` names
the record file to write when it ends in `.tfrecord` or is an existing file (overwritten), so
its README's loop, which writes records/train/train-00001.tfrecord, ... one call each, works
as it is. Any other `-o` is a directory of shards: with --shard_size N, N images each, named
as that loop named them (`-o records/train` gives train-00001.tfrecord, ...: the directory's
name, or --prefix, then a dash and the shard's number from 1); else --num_per_shard images
each in `<prefix>_00000.tfrecord`, ... (prefix `shard`).

The whole "Prepare ImageNET" of the original README after unpacking (GNU parallel,
ImageMagick's `convert IMG -resize "256x256^" IMG` on every file, then that loop) is one
command per split:

    python -m imgcomp.data.records mk_img_rec "train/*/*.JPEG" -o records/train --shard_size 1250 \\
        --resize_short_side 256 --workers 8 --feature_key image/encoded

--resize_short_side S does that ImageMagick step on the way, leaving the files as they are:
an image whose shorter side is not S is scaled, aspect kept, to make it S (smaller ones are
enlarged, as `256x256^` does without `>`; Lanczos when shrinking, bicubic when enlarging, as
ImageMagick's Lanczos and Mitchell defaults) and re-encoded in its own kind: a JPEG as JPEG
with the source's quantization tables and chroma subsampling (ImageMagick re-encodes at the
quality it estimates from the source), CMYK turned into RGB (as TensorFlow's ImageNet
conversion scripts do); any other format as PNG. One whose shorter side is already
S is stored as it is (ImageMagick would re-encode it at the same quality). Without the flag,
each record holds the file's bytes as they are.

Each record is a tf.train.Example whose bytes feature holds an encoded image, readable by
TensorFlow and by ``imgcomp.data.loaders`` (``imgnet_train``/``imgnet_test`` read
``$RECORDS_ROOT/train/*.tfrecord`` and ``$RECORDS_ROOT/val/*.tfrecord``). FILES may also be
(quoted) globs (`**` for any depth) or directories, for lists too long for the shell.
--workers N decodes (and resizes) in N processes; a progress bar goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import io
import itertools
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, JpegImagePlugin
from tqdm import tqdm

from imgcomp.base.atomic import atomic_path
from imgcomp.base.image_files import DatasetError, resolve_image_paths
from imgcomp.data.tfrecord_files import FEATURE_KEY, DataWarning, count_tfrecords

# Shard file names, formatted with the prefix, the shard's index from 0 and number from 1.
SHARD_NAME = "{prefix}_{index:05d}.tfrecord"  # --num_per_shard
ORIGINAL_SHARD_NAME = "{prefix}-{number:05d}.tfrecord"  # --shard_size: the original README's


class ImageTooSmallError(ValueError):
    """An image is below --assert_size."""


def resize_short_side(img: Image.Image, data: bytes, side: int) -> bytes:
    """`img` (decoded from `data`) with its shorter side scaled to `side`, as ImageMagick's
    `-resize "SIDExSIDE^"`, encoded in its own kind (see the module doc); `data` itself if
    the shorter side already is `side`."""
    width, height = img.size
    if min(width, height) == side:
        return data
    scale = side / min(width, height)
    # ImageMagick rounds half up; the shorter side comes out exactly `side`.
    size = ((side, int(height * scale + 0.5)) if width <= height
            else (int(width * scale + 0.5), side))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    keep = {k: img.info[k] for k in ("icc_profile", "exif") if k in img.info}
    out = io.BytesIO()
    if img.format == "JPEG":
        sampling = JpegImagePlugin.get_sampling(img)
        rgb_or_gray = img if img.mode in ("RGB", "L") else img.convert("RGB")
        rgb_or_gray.resize(size, resample).save(
            out, format="JPEG", qtables=img.quantization,
            **({} if sampling == -1 else {"subsampling": sampling}), **keep)
    else:
        img.resize(size, resample).save(out, format="PNG", **keep)
    return out.getvalue()


def _record_bytes(path: Path, min_size: int | None = None,
                  short_side: int | None = None) -> tuple[bytes | None, str]:
    """(the bytes to store for `path`, "") if Pillow decodes it, resized with `short_side`
    (resize_short_side); (None, why) if not. ImageTooSmallError if the stored image's width
    or height is below `min_size`. Runs in --workers processes: returns, not warns."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            if short_side is None or min(img.size) == short_side:
                size = img.size  # before draft(), which shrinks it
                # A reduced-size JPEG decode still parses the whole stream (truncation is
                # caught) at a fraction of the cost; other formats ignore draft().
                img.draft("RGB", (1, 1))
                img.load()
            else:
                data = resize_short_side(img, data, short_side)
                size = Image.open(io.BytesIO(data)).size
    except Exception as exc:  # Pillow's plugins raise many exception types on corrupt data
        return None, str(exc) or type(exc).__name__
    if min_size is not None and min(size) < min_size:
        raise ImageTooSmallError(f"{path} is {size[0]}x{size[1]}, below --assert_size "
                                 f"{min_size}")
    return data, ""


def is_record_file(out: str | os.PathLike) -> bool:
    """Whether `-o out` names one record file (it ends in .tfrecord, or is an existing
    non-directory) rather than a directory of shards."""
    path = Path(out)
    return path.suffix == ".tfrecord" or (path.exists() and not path.is_dir())


def _readable_images(paths: list[Path], min_size: int | None, short_side: int | None,
                     workers: int, progress: bool) -> Iterator[bytes]:
    """The bytes to store of the readable images among `paths`, in order (_record_bytes, in
    `workers` processes); each unreadable one is skipped with a DataWarning."""
    load = functools.partial(_record_bytes, min_size=min_size, short_side=short_side)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(load, paths, chunksize=8)
        else:
            results = map(load, paths)
        bar = stack.enter_context(tqdm(total=len(paths), unit="img", disable=not progress,
                                       dynamic_ncols=True))
        for path, (data, problem) in zip(paths, results, strict=True):
            bar.update()
            if data is None:
                warnings.warn(f"skipping unreadable image {path}: {problem}", DataWarning,
                              stacklevel=2)
            else:
                yield data


def _write_record_file(out: Path, images: Iterable[bytes], feature_key: str) -> int:
    """Write `images` into the record file `out` atomically (a kill leaves the old file or
    none, never a truncated one that readers would take in); returns how many."""
    count = 0
    with atomic_path(out) as tmp:
        from tfrecord.writer import TFRecordWriter  # imports torch: not for --help

        writer = TFRecordWriter(str(tmp))
        try:
            for data in images:
                writer.write({feature_key: (data, "byte")})
                count += 1
        finally:
            writer.close()
    return count


def write_image_record(paths: Iterable[str | os.PathLike], out_file: str | os.PathLike,
                       feature_key: str = FEATURE_KEY, min_size: int | None = None,
                       short_side: int | None = None, workers: int = 1,
                       progress: bool = False) -> int:
    """Write the readable images among `paths` into the one record file `out_file` (made
    atomically, replacing an existing one, as the original overwrote it); returns how many.
    `short_side`: resize_short_side; `workers`: processes decoding; `progress`: a bar on
    stderr. DatasetError if none is readable (nothing is written), ImageTooSmallError as
    _record_bytes."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no image files given")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _readable_images(paths, min_size, short_side, workers, progress)
    first = next(images, None)
    if first is None:
        raise DatasetError(f"none of the {len(paths)} files is a readable image")
    return _write_record_file(out, itertools.chain([first], images), feature_key)


def write_image_records(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    feature_key: str = FEATURE_KEY,
    num_per_shard: int = 1000,
    prefix: str = "shard",
    min_size: int | None = None,
    short_side: int | None = None,
    workers: int = 1,
    progress: bool = False,
    shard_name: str = SHARD_NAME,
) -> list[Path]:
    """Write the readable images among `paths` to shards of `num_per_shard` images in
    OUT_DIR, each atomically, named by `shard_name` (SHARD_NAME: <prefix>_00000.tfrecord,
    ...; ORIGINAL_SHARD_NAME: <prefix>-00001.tfrecord, ...). Other arguments as
    write_image_record.

    Returns the written files. Raises DatasetError if no image is readable,
    FileExistsError if OUT_DIR already holds shards of that prefix (stale shards of an
    earlier run would otherwise be read as part of the dataset) and ImageTooSmallError if an
    image is below `min_size` (the shards written so far are removed).
    """
    if num_per_shard < 1:
        raise ValueError(f"num_per_shard must be at least 1, got {num_per_shard}")
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no image files given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{glob.escape(prefix)}[-_]*.tfrecord"))
    if existing:
        raise FileExistsError(
            f"{out} already holds {len(existing)} shard file(s) of prefix {prefix} "
            f"({existing[0].name}, ...); remove them or choose another --prefix"
        )

    shards: list[Path] = []
    images = _readable_images(paths, min_size, short_side, workers, progress)
    try:
        for first in images:  # each shard: this image and up to num_per_shard - 1 more
            index = len(shards)
            shards.append(out / shard_name.format(prefix=prefix, index=index, number=index + 1))
            _write_record_file(
                shards[-1], itertools.chain([first], itertools.islice(images, num_per_shard - 1)),
                feature_key)
    except ImageTooSmallError:
        for shard in shards:
            shard.unlink(missing_ok=True)
        raise
    if not shards:
        raise DatasetError(f"none of the {len(paths)} files is a readable image")
    return shards


def _expand(args: list[str]) -> list[Path]:
    # Existing files are taken as they are; anything else must be a glob or a directory.
    paths: list[Path] = []
    for arg in args:
        paths.extend([Path(arg)] if os.path.isfile(arg) else resolve_image_paths(arg))
    return paths


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)  # above the progress bar


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="imgcomp records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mk = commands.add_parser("mk_img_rec", help="write images into TFRecords",
                             description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    mk.add_argument("files", nargs="+", metavar="FILES", help="image files, globs or dirs")
    mk.add_argument("-o", "--out_record_path", "--out_dir", dest="out", required=True,
                    metavar="OUTPUT_PATH",
                    help="the record file to write if it ends in .tfrecord or is an existing "
                    "file (overwritten), as the original; else a directory for shards")
    mk.add_argument("--feature_key", default=FEATURE_KEY,
                    help=f"bytes feature key (default {FEATURE_KEY}, what imgnet_train reads; "
                    "the original's default was M)")
    mk.add_argument("--assert_size", type=int, metavar="LENGTH",
                    help="fail, writing nothing, if an image's width or height is below LENGTH")
    mk.add_argument("--resize_short_side", type=int, metavar="S",
                    help="scale each image whose shorter side is not S to make it S, aspect "
                    "kept, as the original README's `convert -resize \"256x256^\"` (see above)")
    mk.add_argument("--workers", type=int, default=1, metavar="N",
                    help="processes decoding and resizing (default 1)")
    mk.add_argument("--shard_size", type=int, metavar="N",
                    help="N images per shard file, named <prefix>-00001.tfrecord, ... as the "
                    "original README's loop (directory output only; prefix: its name)")
    mk.add_argument("--num_per_shard", type=int,
                    help="images per shard file named <prefix>_00000.tfrecord, ... (directory "
                    "output only; default 1000)")
    mk.add_argument("--prefix", help="shard file name prefix (directory output only; default "
                    "shard, with --shard_size the directory's name)")
    args = parser.parse_args(argv)
    single = is_record_file(args.out)
    problem = None
    if single and Path(args.out).is_dir():
        problem = (f"{args.out} is a directory (an earlier version of this writer made "
                   "directories of shards for -o NAME.tfrecord); remove it")
    elif single and (args.num_per_shard, args.shard_size, args.prefix) != (None,) * 3:
        problem = (f"--shard_size, --num_per_shard and --prefix are for a directory output; "
                   f"{args.out} is one record file")
    elif args.shard_size is not None and args.num_per_shard is not None:
        problem = "give --shard_size or --num_per_shard, not both"
    elif args.workers < 1 or (args.resize_short_side is not None and args.resize_short_side < 1):
        problem = "--workers and --resize_short_side must be at least 1"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    options = dict(feature_key=args.feature_key, min_size=args.assert_size,
                   short_side=args.resize_short_side, workers=args.workers, progress=True)

    with warnings.catch_warnings():
        # One plain line per skipped file instead of Python's source-location format.
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = _print_warning
        try:
            if single:
                num_images = write_image_record(_expand(args.files), args.out, **options)
                print(f"{num_images} images -> {args.out}")
                return 0
            if args.shard_size is not None:
                shards = write_image_records(
                    _expand(args.files), args.out, num_per_shard=args.shard_size,
                    prefix=args.prefix or Path(args.out).resolve().name,
                    shard_name=ORIGINAL_SHARD_NAME, **options)
            else:
                shards = write_image_records(
                    _expand(args.files), args.out,
                    num_per_shard=1000 if args.num_per_shard is None else args.num_per_shard,
                    prefix="shard" if args.prefix is None else args.prefix, **options)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    num_images = sum(count_tfrecords(s) for s in shards)
    print(f"{num_images} images -> {len(shards)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
