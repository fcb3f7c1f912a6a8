"""Where the project keeps what it downloads for a user: one folder in the user's cache dir
($XDG_CACHE_HOME, else ~/.cache), `imgcomp/`, holding `models/` (the authors' models,
imgcomp.checkpoints.zoo) and `data/` (the test sets, imgcomp.data.test_sets; $IMGCOMP_DATA
chooses another folder for them)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "IMGCOMP_DATA"


def user_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/imgcomp` (the XDG base-directory rule: ignored unless absolute), else
    `~/.cache/imgcomp`."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".cache"
    return root / "imgcomp"


def data_dir() -> Path:
    """The folder of the downloaded test sets: $IMGCOMP_DATA if set, else the cache's data/."""
    chosen = os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else user_cache_dir() / "data"
