"""Log directories and checkpoints: naming, atomic saving, listing and loading.

A log dir is self-contained: `LOG_DIR_ROOT/MMDD_HHMM <ae> <pc>/ckpts/` holds `ckpt-STEP.pt`
files and the flattened configs `ae_config` and `pc_config` they were trained with.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcomp.base.atomic import atomic_write_bytes
from imgcomp.config.parsing import (
    RESTORE_PREFIX,
    Config,
    config_job_name,
    config_to_text,
    load_config,
)
from imgcomp.config.schema import AE_SCHEMA, PC_SCHEMA
from imgcomp.original.tf_bundle import TFCheckpointError, list_tf_checkpoints
from imgcomp.original.tf_log_dirs import (
    TFLogDirError,
    configs_from_log_dir_name,
    is_tf_ckpt_dir,
    read_tf_state,
)

# torch is imported where checkpoints are saved or loaded: naming, listing and finding log dirs
# (`imgcomp models`, `imgcomp info`) answer without it.
if TYPE_CHECKING:
    import torch

    from imgcomp.codec.image_codec import ImageCodec

CKPTS_DIRNAME = "ckpts"
DEFAULT_LOG_DIR_ROOT = "logs"  # train.py's --log_dir_root unless given
AE_CONFIG_NAME = "ae_config"
PC_CONFIG_NAME = "pc_config"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(ValueError):
    pass


@contextlib.contextmanager
def _as_checkpoint_error() -> Iterator[None]:
    """Problems of an original (TF) log dir reach callers as CheckpointError."""
    try:
        yield
    except (TFLogDirError, TFCheckpointError) as e:
        raise CheckpointError(str(e)) from e


def job_id_of(log_dir: str | os.PathLike) -> str:
    """The job id is the log dir name up to the first space (`MMDD_HHMM`, maybe `_N`)."""
    return Path(log_dir).name.split(" ")[0]


def restore_suffix(restore_dir: str | os.PathLike) -> str:
    """`RESTORE@<root>@<job id>` for a log dir made by restoring `restore_dir` (a log dir or
    its ckpts/), as the original names it: the restored job's log dir root as given, with
    `/` written as `@`, then its job id; e.g. `logs/0515_1103 a b/ckpts` ->
    `RESTORE@logs@0515_1103`."""
    path = Path(restore_dir)
    log_dir = path.parent if path.name == CKPTS_DIRNAME else path
    root = "" if str(log_dir.parent) == "." else str(log_dir.parent)
    return f"{RESTORE_PREFIX}{root.replace(os.sep, '@')}@{job_id_of(log_dir)}"


def make_log_dir(log_dir_root: str | os.PathLike, ae_config_path: str | os.PathLike,
                 pc_config_path: str | os.PathLike, now: time.struct_time | None = None,
                 restore_dir: str | os.PathLike | None = None) -> Path:
    """Create `ROOT/MMDD_HHMM ae@name pc@name`; a `_N` suffix keeps the job id unique, also
    between runs started in the same minute (a lock on ROOT serializes the choice). A run
    restored from `restore_dir` gets ` RESTORE@<root>@<job id>` appended (restore_suffix)."""
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
        name = f"{job_id} {config_job_name(ae_config_path)} {config_job_name(pc_config_path)}"
        if restore_dir is not None:
            name += " " + restore_suffix(restore_dir)
        log_dir = root / name
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
        atomic_write_bytes(ckpt_dir / name, config_to_text(cfg).encode())


def config_changes(old: tuple[Config, Config], new: tuple[Config, Config]) -> list[str]:
    """How the (ae, pc) configs `new` differ from `old`, one line per key:
    `ae_config lr_initial: 0.0001 -> 0.001`, `(absent)` for a key that one side lacks."""
    lines = []
    for name, before, after in zip((AE_CONFIG_NAME, PC_CONFIG_NAME), old, new, strict=True):
        for key in [*before, *(k for k in after if k not in before)]:
            a = repr(before[key]) if key in before else "(absent)"
            b = repr(after[key]) if key in after else "(absent)"
            if a != b:
                lines.append(f"{name} {key}: {a} -> {b}")
    return lines


def keep_old_configs(ckpt_dir: Path, step: int) -> list[Path]:
    """Copy the flattened configs to `NAME.stepSTEP.old` beside them, before new ones replace
    them (`NAME.stepSTEP_2.old`, ... if the configs changed more than once at that step:
    no copy is ever overwritten); returns the copies."""
    copies = []
    for name in (AE_CONFIG_NAME, PC_CONFIG_NAME):
        copy, n = ckpt_dir / f"{name}.step{step}.old", 1
        while copy.exists():
            n += 1
            copy = ckpt_dir / f"{name}.step{step}_{n}.old"
        atomic_write_bytes(copy, (ckpt_dir / name).read_bytes())
        copies.append(copy)
    return copies


# Keys added when the original's graph became the default (README.md, "What differs from
# the original"), and later (the context model's depth): a log dir written before them was
# trained with these, the port's choices.
LEGACY_AE_KEYS = {"tf_same_padding": False, "bottleneck_output_bn": False, "weight_init": "torch",
                  "random_flip": False, "train_ms_ssim": "eval", "adam_epsilon": "torch",
                  "epoch_steps": "exact", "output_uint8": "round"}
LEGACY_PC_KEYS = {"logits_relu": False, "objective": "H_real", "weight_init": "torch",
                  "adam_epsilon": "torch", "arch_param__num_res_blocks": 1}


def _with_legacy_keys(cfg: Config, legacy: dict[str, Any]) -> Config:
    return Config({**legacy, **cfg.to_dict()}, cfg.source_path)


def read_configs(ckpt_dir: str | os.PathLike) -> tuple[Config, Config]:
    """The flattened configs of a log dir; keys it predates get the values it was trained
    with (LEGACY_AE_KEYS, LEGACY_PC_KEYS)."""
    ckpt_dir = ckpt_dir_of(ckpt_dir)
    if is_tf_ckpt_dir(ckpt_dir):  # the original's log dirs are named after their configs
        with _as_checkpoint_error():
            return configs_from_log_dir_name(ckpt_dir.parent)
    missing = [n for n in (AE_CONFIG_NAME, PC_CONFIG_NAME) if not (ckpt_dir / n).is_file()]
    if missing:
        raise CheckpointError(f"{ckpt_dir} has no {' / '.join(missing)}: not a log dir of "
                              "train.py")
    # Checked against the schemas; unused keys of the original were noted when it trained.
    return (_with_legacy_keys(load_config(ckpt_dir / AE_CONFIG_NAME, AE_SCHEMA,
                                          note_unused=False), LEGACY_AE_KEYS),
            _with_legacy_keys(load_config(ckpt_dir / PC_CONFIG_NAME, PC_SCHEMA,
                                          note_unused=False), LEGACY_PC_KEYS))


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in the dir, by increasing step."""
    ckpt_dir = ckpt_dir_of(ckpt_dir)
    if is_tf_ckpt_dir(ckpt_dir):  # written by the original: TF prefixes ckpt-STEP
        with _as_checkpoint_error():
            return list_tf_checkpoints(ckpt_dir)
    found = []
    for p in ckpt_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_path(ckpt_dir: str | os.PathLike, step: int = -1) -> Path:
    """Path of the latest checkpoint with step <= `step` (-1: the latest of all), as the
    original's --restore_itr."""
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        raise CheckpointError(f"no checkpoints (ckpt-STEP.pt) in {ckpt_dir_of(ckpt_dir)}")
    if step == -1:
        return ckpts[-1][1]
    eligible = [p for s, p in ckpts if s <= step]
    if not eligible:
        raise CheckpointError(f"no checkpoint of step <= {step} in {ckpt_dir_of(ckpt_dir)}; "
                              f"available: {', '.join(str(s) for s, _ in ckpts)}")
    return eligible[-1]


def checkpoint_mtime_ns(path: str | os.PathLike) -> int:
    """When a checkpoint as checkpoint_path names it was written: its `.pt` file's
    modification time, or its `.index` file's for a TF prefix of the original (no file)."""
    path = Path(path)
    index = path.with_name(path.name + ".index")
    return (index if index.is_file() else path).stat().st_mtime_ns


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int = 5,
                    keep_every_hours: float | None = None, run_start: float | None = None
                    ) -> Path:
    """Write `ckpt-STEP.pt` atomically (temp file + rename: a kill never leaves a broken
    checkpoint), then prune: keep the newest `keep` checkpoints (0: all) and, with
    `keep_every_hours`, one every so many hours (see prune_checkpoints)."""
    import torch

    path = ckpt_dir / f"ckpt-{step}.pt"
    buffer = io.BytesIO()
    torch.save({"step": step, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    for stale in ckpt_dir.glob(".ckpt-*.pt"):  # temporaries of a run that was killed mid-save
        stale.unlink(missing_ok=True)
    if keep > 0:
        prune_checkpoints(ckpt_dir, keep, keep_every_hours, run_start)
    return path


PRESERVED_NAME = "preserved.json"


def prune_checkpoints(ckpt_dir: Path, keep: int, keep_every_hours: float | None = None,
                      run_start: float | None = None) -> list[Path]:
    """Delete the checkpoints that fall out of the window of the newest `keep`, except, with
    `keep_every_hours` H (the original's --ckpt_interval, TF's keep_checkpoint_every_n_hours),
    one written >= H hours after the last preserved checkpoint (or after `run_start`, the
    time.time() the run started, if none was preserved since): it is preserved for good,
    noted in `ckpts/preserved.json`, and no longer counts in the window. Write times are the
    files' modification times. Returns the deleted files."""
    ckpt_dir = ckpt_dir_of(ckpt_dir)
    if keep_every_hours is not None and run_start is None:
        raise ValueError("keep_every_hours needs run_start")
    record = ckpt_dir / PRESERVED_NAME
    ckpts = list_checkpoints(ckpt_dir)
    steps = {s for s, _ in ckpts}
    try:
        recorded = {int(s): float(t) for s, t in json.loads(record.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        recorded = {}  # no record yet, or unreadable: nothing preserved so far
    # Without the rule (imgcomp.checkpoints.ship), preserved checkpoints are pruned like the others.
    preserved = ({s: t for s, t in recorded.items() if s in steps}
                 if keep_every_hours is not None else {})
    anchor = max([run_start or 0.0, *preserved.values()])
    deleted = []
    window = [(s, p) for s, p in ckpts if s not in preserved]
    for step, old in window[:-keep]:  # oldest first
        written = old.stat().st_mtime if old.is_file() else 0.0
        if keep_every_hours is not None and written >= anchor + keep_every_hours * 3600:
            preserved[step] = anchor = written
            continue
        old.unlink(missing_ok=True)
        deleted.append(old)
    if preserved != recorded:
        if preserved:
            atomic_write_bytes(record, json.dumps(
                {str(s): t for s, t in sorted(preserved.items())}, indent=1).encode())
        else:
            record.unlink(missing_ok=True)
    return deleted


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (no arbitrary code from pickles). A TF
    checkpoint of the original (a `ckpt-STEP` prefix) gives its step and its weights in our
    names, without the original's optimizer states."""
    import torch

    path = Path(path)
    if path.with_name(path.name + ".index").is_file():
        with _as_checkpoint_error():  # log_dir/ckpts/ckpt-STEP
            return read_tf_state(path, *configs_from_log_dir_name(path.parent.parent))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds on truncated/corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def load_codec(ckpt_dir: str | os.PathLike, step: int = -1,
               device: torch.device | str = "cpu") -> ImageCodec:
    """The model of a log dir's checkpoint at `step`, in eval mode."""
    import torch

    from imgcomp.codec.image_codec import ImageCodec

    ae_cfg, pc_cfg = read_configs(ckpt_dir)
    model = ImageCodec.from_configs(ae_cfg, pc_cfg)
    model.load_state_dict(load_checkpoint(checkpoint_path(ckpt_dir, step), device)["model"])
    # channels_last runs the large-image convolutions of inference ~1.4x faster on CPU.
    model.autoencoder.to(memory_format=torch.channels_last)
    return model.to(device).eval()
