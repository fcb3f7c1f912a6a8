"""Log directories and checkpoints: naming, atomic saving, listing and loading.

A log dir is self-contained: `LOG_DIR_ROOT/MMDD_HHMM <ae> <pc>/ckpts/` holds `ckpt-STEP.pt`
files and the flattened configs `ae_config` and `pc_config` they were trained with.
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from imgcomp.config import Config, config_job_name, config_to_text, load_config
from imgcomp.model import ImageCodec

CKPTS_DIRNAME = "ckpts"
AE_CONFIG_NAME = "ae_config"
PC_CONFIG_NAME = "pc_config"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(ValueError):
    pass


def job_id_of(log_dir: str | os.PathLike) -> str:
    """The job id is the log dir name up to the first space (`MMDD_HHMM`, maybe `_N`)."""
    return Path(log_dir).name.split(" ")[0]


def make_log_dir(log_dir_root: str | os.PathLike, ae_config_path: str | os.PathLike,
                 pc_config_path: str | os.PathLike, now: time.struct_time | None = None) -> Path:
    """Create `ROOT/MMDD_HHMM ae@name pc@name`; a `_N` suffix keeps the job id unique, also
    between runs started in the same minute (a lock on ROOT serializes the choice)."""
    root = Path(log_dir_root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%m%d_%H%M", now or time.localtime())
    root_fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(root_fd, fcntl.LOCK_EX)  # released when the descriptor closes
        taken = {job_id_of(p) for p in root.iterdir()}
        job_id, n = stamp, 1
        while job_id in taken:
            job_id = f"{stamp}_{n}"
            n += 1
        log_dir = root / (f"{job_id} {config_job_name(ae_config_path)} "
                          f"{config_job_name(pc_config_path)}")
        (log_dir / CKPTS_DIRNAME).mkdir(parents=True)
    finally:
        os.close(root_fd)
    return log_dir


def find_log_dir(log_dir_root: str | os.PathLike, job_id: str) -> Path:
    """The log dir of `job_id` under `log_dir_root`; CheckpointError if none or ambiguous."""
    root = Path(log_dir_root)
    if not root.is_dir():
        raise CheckpointError(f"log dir root {root} does not exist")
    matches = [p for p in root.iterdir() if p.is_dir() and job_id_of(p) == job_id
               and (p / CKPTS_DIRNAME).is_dir()]
    if not matches:
        raise CheckpointError(f"no job {job_id!r} in {root}")
    if len(matches) > 1:
        raise CheckpointError(f"job id {job_id!r} is ambiguous in {root}: "
                              + ", ".join(p.name for p in matches))
    return matches[0]


def ckpt_dir_of(path: str | os.PathLike) -> Path:
    """Accept a log dir or its ckpts/ dir; return the ckpts/ dir."""
    path = Path(path)
    if (path / CKPTS_DIRNAME).is_dir():
        return path / CKPTS_DIRNAME
    if path.is_dir():
        return path
    raise CheckpointError(f"checkpoint directory {path} does not exist")


def write_configs(ckpt_dir: Path, ae_cfg: Config, pc_cfg: Config) -> None:
    for name, cfg in ((AE_CONFIG_NAME, ae_cfg), (PC_CONFIG_NAME, pc_cfg)):
        _atomic_write_bytes(ckpt_dir / name, config_to_text(cfg).encode())


def read_configs(ckpt_dir: str | os.PathLike) -> tuple[Config, Config]:
    ckpt_dir = ckpt_dir_of(ckpt_dir)
    missing = [n for n in (AE_CONFIG_NAME, PC_CONFIG_NAME) if not (ckpt_dir / n).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt_dir} has no {' / '.join(missing)}: not a log dir of "
                              "train.py")
    return load_config(ckpt_dir / AE_CONFIG_NAME), load_config(ckpt_dir / PC_CONFIG_NAME)


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in the dir, by increasing step."""
    ckpt_dir = ckpt_dir_of(ckpt_dir)
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_path(ckpt_dir: str | os.PathLike, step: int = -1) -> Path:
    """Path of the checkpoint at `step` (-1: the latest)."""
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoints (ckpt-STEP.pt) in {ckpt_dir_of(ckpt_dir)}")
    if step == -1:
        return ckpts[-1][1]
    for s, p in ckpts:
        if s == step:
            return p
    raise CheckpointError(f"no checkpoint of step {step} in {ckpt_dir_of(ckpt_dir)}; "
                          f"available: {', '.join(str(s) for s, _ in ckpts)}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints and configs are shared files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 5) -> Path:
    """Write `ckpt-STEP.pt` atomically (temp file + rename: a kill never leaves a broken
    checkpoint), then delete all but the newest `keep` checkpoints."""
    path = ckpt_dir / f"ckpt-{step}.pt"
    buffer = io.BytesIO()
    torch.save({"step": step, **state}, buffer)
    _atomic_write_bytes(path, buffer.getvalue())
    if keep > 0:
        for _, old in list_checkpoints(ckpt_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (no arbitrary code from pickles)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds on truncated/corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def load_codec(ckpt_dir: str | os.PathLike, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """The model of a log dir's checkpoint at `step`, in eval mode."""
    ae_cfg, pc_cfg = read_configs(ckpt_dir)
    model = ImageCodec.from_configs(ae_cfg, pc_cfg)
    state = load_checkpoint(checkpoint_path(ckpt_dir, step), device)
    model.load_state_dict(state["model"])
    # channels_last runs the large-image convolutions of inference ~1.4x faster on CPU.
    model.autoencoder.to(memory_format=torch.channels_last)
    return model.to(device).eval()
