"""Downloads and archives from outside, handled as untrusted: a file fetched over HTTP(S) with
a progress bar, resumed where an interrupted transfer stopped (HTTP Range, also in a later run)
and checked against a SHA-256 before it takes its name (`download`); a tar archive unpacked
only into a new folder, refusing anything that could write outside it or fill the disk
(`extract_tar`), into a staging folder beside its destination (`staging_dir`), from which
finished folders are renamed into place: an interrupted or refused install leaves nothing half
there. Only the standard library (urllib, tarfile) and tqdm.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import http.client
import json
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from tqdm import tqdm

CHUNK = 1 << 20
USER_AGENT = "imgcomp-download/1"  # some hosts refuse urllib's default agent


class DownloadError(Exception):
    """A download or an archive that cannot be used; the message is one line naming it."""


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _partial_paths(dest: Path) -> tuple[Path, Path]:
    """The hidden file the bytes go to until complete, and its note of where they came from
    (URL and the server's ETag / Last-Modified: a resumed transfer must continue the same
    file)."""
    return dest.with_name(f".{dest.name}.part"), dest.with_name(f".{dest.name}.part.json")


def _open(url: str, offset: int, validator: str | None, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:  # the server sends the whole file instead if it has changed
            headers["If-Range"] = validator
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _start(url: str, offset: int, validator: str | None, timeout: float):
    """(response, offset the body starts at, total size or None). A partial file the server
    cannot continue (Range ignored or refused) restarts at 0."""
    try:
        response = _open(url, offset, validator, timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: the partial file does not fit the file there
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        return _start(url, 0, None, timeout)
    if response.status == 206:
        content_range = response.headers.get("Content-Range", "")  # bytes START-END/TOTAL
        start, _, total = content_range.removeprefix("bytes ").partition("/")
        if start.split("-")[0] != str(offset):
            response.close()
            return _start(url, 0, None, timeout)
        return response, offset, int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return response, 0, int(length) if length and length.isdigit() else None


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             progress: bool = True, attempts: int = 5, timeout: float = 60.0) -> str:
    """Fetch `url` into `dest` and return the file's SHA-256 (hex). The bytes go to a hidden
    `.NAME.part` beside `dest`, kept if the transfer fails so that the next call resumes it;
    a dropped connection is resumed at once, up to `attempts` times while bytes arrive. With
    `sha256`, a file with another digest is deleted and refused. DownloadError (one line) on
    any failure, with `dest` untouched."""
    dest = Path(dest)
    part, note = _partial_paths(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab+") as f:
        try:  # a second download into the same file would interleave the bytes
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{dest}: another download into it is running") from None
        try:
            known = json.loads(note.read_text())
        except (OSError, ValueError):
            known = {}
        offset = f.seek(0, os.SEEK_END) if known.get("url") == url else 0
        try:
            _fetch(url, f, offset, known.get("validator"), note, dest.name, progress,
                   attempts, timeout)
        except DownloadError:
            if not f.tell():  # nothing to resume: leave nothing behind
                part.unlink()
                note.unlink(missing_ok=True)
            raise
        f.flush()
        os.fsync(f.fileno())
    digest = sha256_of(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        note.unlink(missing_ok=True)
        raise DownloadError(f"{url}: SHA-256 is {digest}, expected {sha256.lower()}: the "
                            "download was deleted")
    os.replace(part, dest)
    note.unlink(missing_ok=True)
    return digest


def _fetch(url: str, f, offset: int, validator: str | None, note: Path, label: str,
           progress: bool, attempts: int, timeout: float) -> None:
    """Append the rest of `url`'s body to the open partial file `f` that holds `offset` bytes."""
    for attempt in range(attempts):
        try:
            response, offset, total = _start(url, offset, validator, timeout)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"cannot download {url}: {reason}") from None
        if offset == 0:  # a new file: remember what it is, for a resume
            f.truncate(0)
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            note.write_text(json.dumps({"url": url, "validator": validator}))
        elif attempt == 0:
            tqdm.write(f"resuming {label} at byte {offset}")
        received = 0  # `f` is in append mode: its end is `offset`
        with response, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                            unit_divisor=1024, desc=label, disable=not progress,
                            leave=False) as bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException):
                pass  # a dropped connection: resumed below
        offset += received
        if total is None or offset == total:
            return
        if not received:
            break
        tqdm.write(f"connection lost at byte {offset} of {total}; resuming")
    raise DownloadError(f"cannot download {url}: the transfer stopped at byte {offset} of "
                        f"{total} (run again to resume)")


def _member_path(label: str, member: tarfile.TarInfo) -> PurePosixPath:
    """The member's path inside the archive, refused if it is absolute, climbs out with `..`,
    or is anything but a regular file or a folder."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\0" in member.name:
        raise DownloadError(f"{label}: member {member.name!r} points outside the archive's "
                            "folder; refused, nothing was installed")
    kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
            else "a device file" if member.ischr() or member.isblk()
            else "a FIFO" if member.isfifo() else "a sparse file" if member.issparse()
            else None if member.isfile() or member.isdir() else "of an unknown type")
    if kind:
        raise DownloadError(f"{label}: member {member.name!r} is {kind}; refused, nothing "
                            "was installed")
    return path


def extract_tar(archive: str | os.PathLike, into: str | os.PathLike, *, max_bytes: int,
                label: str | None = None,
                select: Callable[[PurePosixPath], bool] | None = None) -> None:
    """Unpack the tar archive (any compression tarfile reads) into the folder `into`, which
    must be new or empty: the members `select` accepts (all by default), every member checked
    first (see _member_path), at most `max_bytes` unpacked in all. Files get mode 0644, folders
    0755, whatever the archive says. DownloadError naming `label` (default: the archive) and
    the member on any refusal or read error; what was unpacked stays in `into` for the caller
    to remove (staging_dir does)."""
    label = label or os.fspath(archive)
    into = Path(into)
    unpacked = 0
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(unit="B", unit_scale=True,
                                                       unit_divisor=1024, desc="unpacking",
                                                       leave=False) as bar:
            for member in tar:
                path = _member_path(label, member)
                if not path.parts or (select is not None and not select(path)):
                    continue
                target = into.joinpath(*path.parts)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                unpacked += member.size
                if unpacked > max_bytes:
                    raise DownloadError(f"{label}: unpacks to more than {max_bytes} bytes (at "
                                        f"member {member.name!r}); refused, nothing was "
                                        "installed")
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                target.chmod(0o644)
                bar.update(member.size)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
        raise DownloadError(f"{label}: not a readable tar archive ({e}); nothing was "
                            "installed") from None


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike) -> Iterator[Path]:
    """A new hidden folder in `parent` (so that renames out of it into `parent` are atomic),
    removed with whatever is left in it when the block ends, however it ends."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
