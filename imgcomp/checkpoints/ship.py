"""`python -m imgcomp.checkpoints.ship LOG_DIR...`: make trained log dirs small enough to commit.

Keeps the latest checkpoint without its optimizer states (a third of its size; training
resumed from it starts Adam afresh) and the TensorBoard events without their image
summaries (most of their size). Scalars, histograms, configs and console.log stay.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter

from imgcomp.base.atomic import atomic_open
from imgcomp.checkpoints import log_dirs as ckpt

# What val.py, the codec and a resumed run need; the optimizer states are left out.
SHIPPED_STATE = ("model", "ae_schedule", "pc_schedule")


def slim_checkpoints(ckpt_dir: Path) -> Path:
    """Rewrite the latest checkpoint of `ckpt_dir` with SHIPPED_STATE only (on the CPU) and
    delete the older ones; returns its path."""
    checkpoints = ckpt.list_checkpoints(ckpt_dir)
    if not checkpoints:
        raise ckpt.CheckpointError(f"no checkpoints in {ckpt_dir}")
    step, latest = checkpoints[-1]
    state = ckpt.load_checkpoint(latest, "cpu")
    missing = [k for k in SHIPPED_STATE if k not in state]
    if missing:
        raise ckpt.CheckpointError(f"{latest} lacks {', '.join(missing)}")
    return ckpt.save_checkpoint(ckpt_dir, step, {k: state[k] for k in SHIPPED_STATE}, keep=1)


def strip_images(events_path: Path) -> None:
    """Rewrite a TensorBoard events file without its image summaries."""
    kept = []
    for record in RawEventFileLoader(str(events_path)).Load():
        event = Event.FromString(record)
        values = [v for v in event.summary.value if not v.HasField("image")]
        if len(values) < len(event.summary.value):
            if not values:
                continue
            del event.summary.value[:]
            event.summary.value.extend(values)
            record = event.SerializeToString()
        kept.append(record)
    with atomic_open(events_path, "wb") as f:
        writer = RecordWriter(f)
        for record in kept:
            writer.write(record)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ship(log_dir: Path) -> tuple[int, int]:
    """Slim one log dir in place; returns its size in bytes (before, after)."""
    before = _size(log_dir)
    slim_checkpoints(ckpt.ckpt_dir_of(log_dir))
    for events in sorted(log_dir.glob("events.out.tfevents.*")):
        strip_images(events)
    return before, _size(log_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="imgcomp ship", description="Make trained log dirs small enough to "
        "commit: the latest checkpoint without optimizer states, the TensorBoard events "
        "without images. Changes the log dirs in place.")
    p.add_argument("log_dirs", nargs="+", metavar="LOG_DIR", type=Path,
                   help="a log dir written by train.py")
    args = p.parse_args(argv)
    for log_dir in args.log_dirs:
        try:
            before, after = ship(log_dir)
        except (ckpt.CheckpointError, OSError) as e:
            print(f"error: {log_dir}: {e}", file=sys.stderr)
            return 1
        print(f"{log_dir}: {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
