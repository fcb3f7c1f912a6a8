"""The authors' released models, one command away (`imgcomp models --download authors`): the
original README's `ckpts.tar.gz` (the log dirs of zoo.AUTHORS, as the original TF code wrote
them) downloaded, checked and unpacked into the user's models folder, where the zoo finds them.

The archive may hold the log dirs at its top or under one folder (`ckpts/`, as the README
says to extract it). It is unpacked into a staging folder beside the destination
(imgcomp.base.download: no absolute paths, `..`, links or device files, a size cap), each log
dir checked to hold a complete TF checkpoint, then renamed into place: a partial, corrupt or
hostile archive leaves nothing installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from imgcomp.base.download import DownloadError, download, extract_tar, staging_dir
from imgcomp.checkpoints import zoo
from imgcomp.checkpoints.log_dirs import CKPTS_DIRNAME, job_id_of
from imgcomp.original.tf_bundle import TFCheckpointError, list_tf_checkpoints

AUTHORS_URL = "http://data.vision.ee.ethz.ch/mentzerf/imgcomp-ckpts/ckpts.tar.gz"
AUTHORS_URL_ENV = "IMGCOMP_AUTHORS_URL"  # a mirror (the link has been down before), or a test
# Refuse archives that unpack to more: three log dirs of TF checkpoints are far smaller.
MAX_UNPACKED_BYTES = 16 << 30


def authors_url() -> str:
    return os.environ.get(AUTHORS_URL_ENV) or AUTHORS_URL


def install_dir() -> Path:
    """Where downloaded models go: the first root of $IMGCOMP_MODELS if set (the folder the
    user chose to keep models in), else zoo.user_models_dir()."""
    return zoo.models_search_path()[0]


def _is_tf_log_dir(path: Path) -> bool:
    try:
        return path.is_dir() and bool(list_tf_checkpoints(path / CKPTS_DIRNAME))
    except (TFCheckpointError, OSError):
        return False


def _log_dirs_in(folder: Path) -> list[Path]:
    """The original's log dirs at the top of the unpacked archive, or inside its only folder."""
    found = sorted(p for p in folder.iterdir() if _is_tf_log_dir(p))
    folders = [p for p in folder.iterdir() if p.is_dir()]
    if not found and len(folders) == 1:
        return _log_dirs_in(folders[0])
    return found


def install_authors_models(sha256: str | None = None, url: str | None = None,
                           dest: Path | None = None) -> list[Path]:
    """Download the authors' archive from `url` (default: authors_url()), check it against
    `sha256` if given, and install its log dirs into `dest` (default: install_dir()); log dirs
    already there are kept. Returns the log dirs installed (none if all of the authors' were
    there already). DownloadError (one line, with the manual steps where the download itself
    failed) if anything goes wrong; nothing is installed then."""
    url = url or authors_url()
    dest = dest or install_dir()
    if (dest / CKPTS_DIRNAME).is_dir():
        raise DownloadError(f"{dest} (first folder of ${zoo.MODELS_PATH_ENV}) is a log dir, "
                            "not a folder to install log dirs into")
    wanted = {row.job_id for row in zoo.AUTHORS}
    present = {job_id_of(p) for p in dest.iterdir() if _is_tf_log_dir(p)} \
        if dest.is_dir() else set()
    if wanted <= present:
        print(f"the authors' models are installed in {dest} already", file=sys.stderr)
        return []
    archive = dest / (url.rstrip("/").rsplit("/", 1)[-1] or "ckpts.tar.gz")  # removed below
    try:
        digest = download(url, archive, sha256=sha256)
    except DownloadError as e:
        raise DownloadError(f"{e}. To install by hand: download {url}, extract it and move "
                            f"the log dirs it holds (0515_1103 ..., 0515_1309 ..., 0515_1310 "
                            f"...) into {dest}") from None
    print(f"sha256 {digest}  {url}", file=sys.stderr)
    installed = []
    try:
        with staging_dir(dest) as stage:
            extract_tar(archive, stage, max_bytes=MAX_UNPACKED_BYTES, label=url)
            log_dirs = _log_dirs_in(stage)
            if not log_dirs:
                raise DownloadError(f"{url}: no log dir of the original in it "
                                    "('<JOB_ID> <ae> <pc>/ckpts/ckpt-STEP.index'); nothing "
                                    "was installed")
            for log_dir in log_dirs:
                if (dest / log_dir.name).exists():
                    continue
                os.rename(log_dir, dest / log_dir.name)
                installed.append(dest / log_dir.name)
    finally:
        archive.unlink(missing_ok=True)
    missing = wanted - present - {job_id_of(p) for p in installed}
    if missing:
        print(f"warning: {url} lacks the authors' job ids {', '.join(sorted(missing))}",
              file=sys.stderr)
    return installed
