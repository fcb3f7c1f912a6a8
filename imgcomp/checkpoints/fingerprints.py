"""The fingerprint of a log dir's checkpoint (bitstream.model_fingerprint of its weights), by
which decode finds the model of a file and `imgcomp models` lists models.

Computing one loads the model (torch, ~2 s, more for a large one), so each is kept in
`fingerprints.json` in the user's cache dir, keyed by the checkpoint's path and modification
time: a listing or a lookup loads only the checkpoints it has not seen. The file is a cache:
unreadable, it is ignored; unwritable, fingerprints are computed again next time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from imgcomp.base.atomic import atomic_write_text
from imgcomp.base.user_dirs import user_cache_dir
from imgcomp.checkpoints.log_dirs import (
    checkpoint_mtime_ns,
    checkpoint_path,
    ckpt_dir_of,
    load_codec,
)
from imgcomp.entropy_coding.bitstream import model_fingerprint

CACHE_NAME = "fingerprints.json"


def cache_path() -> Path:
    return user_cache_dir() / CACHE_NAME


def _read_cache() -> dict[str, dict]:
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _exists(checkpoint: str) -> bool:
    """A checkpoint still there: a `.pt` file, or a TF prefix of the original (its `.index`)."""
    return os.path.exists(checkpoint) or os.path.exists(checkpoint + ".index")


def _remember(checkpoint: str, mtime_ns: int, fingerprint: str) -> None:
    """Add an entry, re-reading the file first (other processes' entries stay) and dropping
    those of checkpoints gone (pruned, deleted log dirs)."""
    entries = {path: entry for path, entry in _read_cache().items() if _exists(path)}
    entries[checkpoint] = {"mtime_ns": mtime_ns, "fingerprint": fingerprint}
    try:
        cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_path(), json.dumps(entries, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache dir: the fingerprint is computed again next time


def fingerprint_of(log_dir: str | os.PathLike, step: int = -1) -> str:
    """Hex fingerprint of a log dir's checkpoint at `step` (-1: latest): from the cache if the
    checkpoint is unchanged since it was computed, else by loading the model."""
    ckpt_dir = ckpt_dir_of(log_dir).resolve()
    checkpoint = str(checkpoint_path(ckpt_dir, step))
    mtime_ns = checkpoint_mtime_ns(checkpoint)
    entry = _read_cache().get(checkpoint)
    if isinstance(entry, dict) and entry.get("mtime_ns") == mtime_ns:
        return str(entry["fingerprint"])
    fingerprint = model_fingerprint(load_codec(ckpt_dir, step)).hex()
    _remember(checkpoint, mtime_ns, fingerprint)
    return fingerprint
