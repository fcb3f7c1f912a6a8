"""TFRecord files as the original wrote them, without torch: the image feature's key, the
warning of a skipped image, and the record count from the framing alone (`imgcomp records`
and its --help need neither torch nor the tfrecord package, which imports torch)."""

from __future__ import annotations

import os
import struct

from imgcomp.base.image_files import DatasetError

FEATURE_KEY = "image/encoded"


class DataWarning(UserWarning):
    """One image is unreadable or smaller than the crop; loading goes on without it."""


def count_tfrecords(path: str | os.PathLike) -> int:
    """Number of records in a TFRecord file, from the length headers alone (no decoding).

    Raises DatasetError if the file is truncated or not a TFRecord file.
    """
    size = os.path.getsize(path)
    count = pos = 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                break
            (length,) = struct.unpack("<Q", header)
            # Record framing: length (8), length CRC (4), data, data CRC (4).
            pos += 16 + length
            count += 1
    if pos != size:
        raise DatasetError(f"{os.fspath(path)} is truncated or not a TFRecord file")
    return count
