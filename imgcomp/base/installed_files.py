"""Where the files that ship beside the package lie: the shipped models (`ckpts/`) and the
original's config folders (`ae_configs/`, `pc_configs/`)."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def installed_files_root() -> Path:
    """In a checkout (or an editable install), the repository; else the copy a wheel installed
    (pyproject.toml's data-files: share/imgcomp under the install scheme's data path, i.e. the
    venv or sys.prefix, or the user base after `pip install --user`)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "ckpts").is_dir():
        return checkout
    installed = [Path(sysconfig.get_path("data", scheme), "share", "imgcomp")
                 for scheme in (sysconfig.get_default_scheme(),
                                sysconfig.get_preferred_scheme("user"))]
    return next((path for path in installed if path.is_dir()), installed[0])
