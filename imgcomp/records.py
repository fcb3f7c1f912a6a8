"""Write image files into TFRecord shards (replaces fjcommon's ``mk_img_rec``).

    python -m imgcomp.records mk_img_rec FILES... -o OUT_DIR [--feature_key image/encoded]
        [--num_per_shard 1000] [--prefix shard]

Each record is a tf.train.Example whose bytes feature holds the file's bytes as they are (no
re-encoding), readable by TensorFlow and by ``imgcomp.data`` (``imgnet_train``/``imgnet_test``
with RECORDS_ROOT pointing at the parent of OUT_DIR's train/ and val/). FILES may also be
(quoted) globs or directories, for lists too long for the shell.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from tfrecord.writer import TFRecordWriter

from imgcomp.data import (
    FEATURE_KEY,
    DatasetError,
    DataWarning,
    count_tfrecords,
    resolve_image_paths,
)


def _readable_image_bytes(path: Path) -> bytes | None:
    """The file's bytes if Pillow decodes them, else None (with a warning)."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            # A reduced-size JPEG decode still parses the whole stream (truncation is caught)
            # at a fraction of the cost; other formats ignore draft().
            img.draft("RGB", (1, 1))
            img.load()
    except Exception as exc:  # Pillow's plugins raise many exception types on corrupt data
        warnings.warn(f"skipping unreadable image {path}: {exc}", DataWarning, stacklevel=2)
        return None
    return data


def write_image_records(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    feature_key: str = FEATURE_KEY,
    num_per_shard: int = 1000,
    prefix: str = "shard",
) -> list[Path]:
    """Write the readable images among `paths` to OUT_DIR/<prefix>_00000.tfrecord, ...

    Returns the written files. Raises DatasetError if no image is readable and
    FileExistsError if OUT_DIR already holds shards of that prefix (stale shards of an
    earlier run would otherwise be read as part of the dataset).
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
    writer: TFRecordWriter | None = None
    count = 0
    try:
        for path in paths:
            data = _readable_image_bytes(path)
            if data is None:
                continue
            if count % num_per_shard == 0:
                if writer is not None:
                    writer.close()
                shards.append(out / f"{prefix}_{len(shards):05d}.tfrecord")
                writer = TFRecordWriter(str(shards[-1]))
            writer.write({feature_key: (data, "byte")})
            count += 1
    finally:
        if writer is not None:
            writer.close()
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
    mk = commands.add_parser("mk_img_rec", help="write images into TFRecord shards")
    mk.add_argument("files", nargs="+", metavar="FILES", help="image files, globs or dirs")
    mk.add_argument("-o", "--out_dir", required=True, help="output directory")
    mk.add_argument("--feature_key", default=FEATURE_KEY, help="bytes feature key")
    mk.add_argument("--num_per_shard", type=int, default=1000, help="images per file")
    mk.add_argument("--prefix", default="shard", help="output file name prefix")
    args = parser.parse_args(argv)

    with warnings.catch_warnings():
        # One plain line per skipped file instead of Python's source-location format.
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = _print_warning
        try:
            shards = write_image_records(
                _expand(args.files),
                args.out_dir,
                feature_key=args.feature_key,
                num_per_shard=args.num_per_shard,
                prefix=args.prefix,
            )
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    num_images = sum(count_tfrecords(s) for s in shards)
    print(f"{num_images} images -> {len(shards)} files in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
