"""Atomic file writes: a file the project writes is either its old version or its complete new
one, never half written, whatever kills the process (temporary file beside it, fsync, rename).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` with the same suffix (writers that pick the format from
    the suffix keep working), hidden by a leading dot; renamed onto `path` when the block ends
    without error, removed otherwise."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    except OSError as e:  # named after the file asked for, not the hidden temporary
        raise type(e)(e.errno, e.strerror, os.fspath(path)) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are shared files
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """open(path, mode) for writing, atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
