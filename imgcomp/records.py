"""Write image files into TFRecords (replaces fjcommon's ``mk_img_rec``).

    python -m imgcomp.records mk_img_rec FILES... -o OUT.tfrecord [--feature_key image/encoded]
        [--assert_size LENGTH]
    python -m imgcomp.records mk_img_rec FILES... -o OUT_DIR [--num_per_shard 1000]
        [--prefix shard] ...

As the original (`python -m fjcommon tf_records mk_img_rec FILES -o OUTPUT_PATH`), `-o` names
the record file to write when it ends in `.tfrecord` or is an existing file (overwritten), so
its README's loop, which writes records/train/train-00001.tfrecord, ... one call each, works
as it is. Any other `-o` is a directory that gets `<prefix>_00000.tfrecord`, ... shards.

Each record is a tf.train.Example whose bytes feature holds the file's bytes as they are (no
re-encoding), readable by TensorFlow and by ``imgcomp.data`` (``imgnet_train``/``imgnet_test``
read ``$RECORDS_ROOT/train/*.tfrecord`` and ``$RECORDS_ROOT/val/*.tfrecord``). FILES may also
be (quoted) globs or directories, for lists too long for the shell.
"""

from __future__ import annotations

import argparse
import glob
import io
import itertools
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image
from tfrecord.writer import TFRecordWriter

from imgcomp.atomic import atomic_path
from imgcomp.data import FEATURE_KEY, DataWarning, count_tfrecords
from imgcomp.imageio import DatasetError, resolve_image_paths


class ImageTooSmallError(ValueError):
    """An image is below --assert_size."""


def _readable_image_bytes(path: Path, min_size: int | None = None) -> bytes | None:
    """The file's bytes if Pillow decodes them, else None (with a warning).
    ImageTooSmallError if its width or height is below `min_size`."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            # A reduced-size JPEG decode still parses the whole stream (truncation is caught)
            # at a fraction of the cost; other formats ignore draft().
            img.draft("RGB", (1, 1))
            img.load()
    except Exception as exc:  # Pillow's plugins raise many exception types on corrupt data
        warnings.warn(f"skipping unreadable image {path}: {exc}", DataWarning, stacklevel=2)
        return None
    if min_size is not None and min(size) < min_size:
        raise ImageTooSmallError(f"{path} is {size[0]}x{size[1]}, below --assert_size "
                                 f"{min_size}")
    return data


def is_record_file(out: str | os.PathLike) -> bool:
    """Whether `-o out` names one record file (it ends in .tfrecord, or is an existing
    non-directory) rather than a directory of shards."""
    path = Path(out)
    return path.suffix == ".tfrecord" or (path.exists() and not path.is_dir())


def _readable_images(paths: Iterable[Path], min_size: int | None) -> Iterator[bytes]:
    """The bytes of the readable images among `paths` (see _readable_image_bytes)."""
    return (data for data in (_readable_image_bytes(p, min_size) for p in paths)
            if data is not None)


def _write_record_file(out: Path, images: Iterable[bytes], feature_key: str) -> int:
    """Write `images` into the record file `out` atomically (a kill leaves the old file or
    none, never a truncated one that readers would take in); returns how many."""
    count = 0
    with atomic_path(out) as tmp:
        writer = TFRecordWriter(str(tmp))
        try:
            for data in images:
                writer.write({feature_key: (data, "byte")})
                count += 1
        finally:
            writer.close()
    return count


def write_image_record(paths: Iterable[str | os.PathLike], out_file: str | os.PathLike,
                       feature_key: str = FEATURE_KEY, min_size: int | None = None) -> int:
    """Write the readable images among `paths` into the one record file `out_file` (made
    atomically, replacing an existing one, as the original overwrote it); returns how many.
    DatasetError if none is readable (nothing is written), ImageTooSmallError as
    _readable_image_bytes."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DatasetError("no image files given")
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = _readable_images(paths, min_size)
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
) -> list[Path]:
    """Write the readable images among `paths` to OUT_DIR/<prefix>_00000.tfrecord, ...
    (each shard atomically).

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
    existing = sorted(out.glob(f"{glob.escape(prefix)}_*.tfrecord"))
    if existing:
        raise FileExistsError(
            f"{out} already holds {len(existing)} {prefix}_*.tfrecord file(s); "
            "remove them or choose another --prefix"
        )

    shards: list[Path] = []
    images = _readable_images(paths, min_size)
    try:
        for first in images:  # each shard: this image and up to num_per_shard - 1 more
            shards.append(out / f"{prefix}_{len(shards):05d}.tfrecord")
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
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m imgcomp.records",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    mk = commands.add_parser("mk_img_rec", help="write images into TFRecords")
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
    mk.add_argument("--num_per_shard", type=int,
                    help="images per shard file (directory output only; default 1000)")
    mk.add_argument("--prefix", help="shard file name prefix (directory output only; default "
                    "shard)")
    args = parser.parse_args(argv)
    single = is_record_file(args.out)
    if single and Path(args.out).is_dir():
        print(f"error: {args.out} is a directory (an earlier version of this writer made "
              "directories of shards for -o NAME.tfrecord); remove it", file=sys.stderr)
        return 1
    if single and (args.num_per_shard is not None or args.prefix is not None):
        print(f"error: --num_per_shard and --prefix are for a directory output; {args.out} "
              "is one record file", file=sys.stderr)
        return 1

    with warnings.catch_warnings():
        # One plain line per skipped file instead of Python's source-location format.
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = _print_warning
        try:
            if single:
                num_images = write_image_record(_expand(args.files), args.out,
                                                feature_key=args.feature_key,
                                                min_size=args.assert_size)
                print(f"{num_images} images -> {args.out}")
                return 0
            shards = write_image_records(
                _expand(args.files),
                args.out,
                feature_key=args.feature_key,
                num_per_shard=1000 if args.num_per_shard is None else args.num_per_shard,
                prefix="shard" if args.prefix is None else args.prefix,
                min_size=args.assert_size,
            )
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    num_images = sum(count_tfrecords(s) for s in shards)
    print(f"{num_images} images -> {len(shards)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
