"""Training: the Trainer (model, optimizers, one step, evaluation, checkpoint state) and
train.py's run: loaders, restore, log dir, the loop with its summaries and checkpoints.

`python train.py AE_CONFIG PC_CONFIG ...` calls `main` (flags: imgcomp.train.flags). Under
torchrun every rank trains; the main rank alone prints, tests and writes the log dir,
checkpoints, TensorBoard events and console.log (its console lines, see _ConsoleLog).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import itertools
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from imgcomp.base.device import select_device
from imgcomp.base.distributed import World, all_ranks_agree, any_rank, close_world, init_world
from imgcomp.base.image_files import DatasetError
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import CodecOutput, ImageCodec
from imgcomp.config.parsing import Config, ConfigError, load_config_with_notes
from imgcomp.config.schema import AE_SCHEMA, PC_SCHEMA
from imgcomp.data.loaders import EpochDataLoader, make_loader
from imgcomp.train.flags import (
    DESCRIPTION_NAME,
    build_arg_parser,
    resolve_restore_flags,
    restore_skip_vars,
)
from imgcomp.train.losses import LossTerms, compute_loss
from imgcomp.train.optimization import learning_rate, make_optimizer, steps_per_epoch

CONSOLE_LOG_NAME = "console.log"  # in the log dir: train.py's console lines
_log = logging.getLogger("imgcomp.train")


def skip_matches(pattern: str, name: str, state: dict[str, Any]) -> bool:
    """--restore_skip_vars: `pattern` is part of the variable's name (for a checkpoint of the
    original, also of its TF variable name)."""
    return pattern in name or pattern in state.get("tf_names", {}).get(name, "")


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (glibc >= 2.33): heap statistics in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


try:
    _LIBC = ctypes.CDLL(None)
except (OSError, TypeError):  # no C library to load this way (Windows)
    _LIBC = None
_MALLINFO2 = getattr(_LIBC, "mallinfo2", None)
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
_MALLOPT = getattr(_LIBC, "mallopt", None)
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2
# glibc's mallopt parameters; -1 disables the heap's automatic trimming (mallopt(3)).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Blocks below this size are kept in the heap when freed (glibc refusing it: 32 MiB, the
# largest that glibc documents).
_KEEP_BLOCKS_BELOW = (1 << 30, 32 << 20)
# The heap is given back when the process has grown by this fraction over its peak during
# the first step and at least RELEASE_FREE_HEAP_BYTES of the heap are free (the cpu/ configs
# never leave that much, and releasing would cost them 15 % of a step).
RELEASE_GROWTH = 0.25
RELEASE_FREE_HEAP_BYTES = 256 * 1024 * 1024


def resident_bytes() -> tuple[int, int] | None:
    """The process's resident memory now and at its peak, in bytes (Linux's /proc), or None."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None


class TrainingHeap:
    """The C heap's policy while training (glibc only; a no-op elsewhere).

    By default glibc gives large blocks pages of their own and shrinks the heap when 64 MB at
    its top are free. A training step frees its activations (25 MB each at the paper's
    setting) at its end, so every step faulted its gigabytes back in: 1.4 million page faults
    and a fifth of a 13-14 s step. Created, this makes the process keep freed blocks in its
    heap (glibc's thresholds are process-wide), and later steps reuse them without a fault:
    10.8 s/step at the same 5.8 GB peak RSS. That the heap does not creep up from step to
    step is the trainer's doing: gradients are freed right after the update, not among the
    next step's activations. As a guard, `after_step` gives freed pages back to the OS
    (malloc_trim) once the process outgrows its first step's peak by RELEASE_GROWTH."""

    def __init__(self) -> None:
        self.limit: int | None = None  # resident bytes above which the heap is released
        self.releases = 0
        if _MALLOPT is not None:
            _MALLOPT(_M_TRIM_THRESHOLD, -1)
            for size in _KEEP_BLOCKS_BELOW:
                if _MALLOPT(_M_MMAP_THRESHOLD, size):  # 1: accepted
                    break

    def after_step(self) -> None:
        if _MALLINFO2 is None or _MALLOC_TRIM is None or (memory := resident_bytes()) is None:
            return
        resident, peak = memory
        if self.limit is None:
            self.limit = int(peak * (1 + RELEASE_GROWTH))
        elif resident > self.limit and _MALLINFO2().fordblks > RELEASE_FREE_HEAP_BYTES:
            _MALLOC_TRIM(0)
            self.releases += 1


class Trainer:
    """Holds model and optimizers; one `train_step` per batch.

    Under torchrun the model is wrapped in DistributedDataParallel (gradients averaged over
    ranks). BatchNorm stays plain: each rank normalizes with its own batch's statistics and
    the running statistics are broadcast from rank 0 at every forward (DDP's default), so
    evaluation and checkpoints use rank 0's. `batch_size` is per process.
    """

    def __init__(
        self, ae_cfg: Config, pc_cfg: Config, device: torch.device, num_train_images: int,
        world: World | None = None,
    ) -> None:
        world = world or World()
        self.ae_cfg, self.pc_cfg, self.device, self.world = ae_cfg, pc_cfg, device, world
        self.model = ImageCodec.from_configs(ae_cfg, pc_cfg).to(device)
        self.forward = self.model
        if world.distributed:
            self.forward = DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.step = 0
        self.heap = TrainingHeap()
        self.steps_per_epoch = steps_per_epoch(ae_cfg, num_train_images, world.world_size)
        (ae_lr, centers_lr), (pc_lr,) = self.learning_rates(0)  # the base rates
        self.ae_optimizer = make_optimizer(
            [
                {"params": self.model.autoencoder.parameters()},
                {"params": self.model.quantizer.parameters(), "lr": centers_lr},
            ],
            ae_cfg,
            ae_lr,
        )
        self.pc_optimizer = make_optimizer(self.model.probclass.parameters(), pc_cfg, pc_lr)

    def learning_rates(self, step: int) -> tuple[list[float], list[float]]:
        """The rates of the update from `step` to `step + 1`, per parameter group of the
        autoencoder's optimizer (autoencoder, centres) and of the probclass's. A function of
        the step and this run's configs only: a restored step gets its rates back, with the
        configured base rates (a checkpoint's own must not override a new config)."""
        ae, pc, epoch = self.ae_cfg, self.pc_cfg, self.steps_per_epoch
        centers_scale = ae.lr_centers_factor or 1.0
        return ([learning_rate(ae, step, epoch), learning_rate(ae, step, epoch, centers_scale)],
                [learning_rate(pc, step, epoch)])

    def train_step(self, x: torch.Tensor) -> LossTerms | None:
        """One optimization step; returns the loss terms, or None (and no update) when the
        loss is not finite."""
        try:
            return self._optimize(x)
        finally:
            self.heap.after_step()

    def _optimize(self, x: torch.Tensor) -> LossTerms | None:
        self.model.train()
        # channels_last makes the autoencoder's convolutions (forward and backward) up to ~1.8x
        # faster on CPU (oneDNN needs no reorders); every layer keeps its input's layout.
        x = x.contiguous(memory_format=torch.channels_last)
        out = self.forward(x)
        terms = compute_loss(self.model, out, x, self.ae_cfg, self.pc_cfg)
        finite = bool(torch.isfinite(terms.total))
        # Every rank must agree, or the others would wait forever in the gradient all-reduce.
        if not all_ranks_agree(finite, self.world, self.device):
            return None
        terms.total.backward()
        # A frozen part keeps no gradients, so its optimizer step leaves it unchanged while
        # the learning rates still follow the global step.
        if not self.ae_cfg.train_autoencoder:
            self.ae_optimizer.zero_grad(set_to_none=True)
        if not self.ae_cfg.train_probclass:
            self.pc_optimizer.zero_grad(set_to_none=True)
        optimizers = (self.ae_optimizer, self.pc_optimizer)
        for optimizer, lrs in zip(optimizers, self.learning_rates(self.step), strict=True):
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            optimizer.step()
        # Gradients go as soon as they are used: kept to the next backward, their blocks would
        # lie among the next forward's activations in the heap and fragment it.
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return terms

    @torch.no_grad()
    def evaluate(self, batches: Iterator[torch.Tensor]) -> dict[str, float]:
        """Mean test metrics on qhard (eval mode), weighted by batch size."""
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        for x in batches:
            x = x.to(self.device)
            terms = compute_loss(self.model, self.model(x), x, self.ae_cfg, self.pc_cfg)
            for name in ("ms_ssim", "psnr", "bpp", "H_real", "total"):
                sums[name] = sums.get(name, 0.0) + float(getattr(terms, name)) * len(x)
            count += len(x)
        return {k: v / max(count, 1) for k, v in sums.items()}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's content (save_checkpoint adds the step). `ae_schedule` and
        `pc_schedule` record the schedules' position in the fields of the LambdaLR states
        that earlier checkpoints hold; restoring needs only the step."""
        schedules = {
            name: {"base_lrs": base, "last_epoch": self.step, "_last_lr": now}
            for name, base, now in zip(("ae_schedule", "pc_schedule"), self.learning_rates(0),
                                       self.learning_rates(self.step), strict=True)
        }
        return {
            "model": self.model.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "pc_optimizer": self.pc_optimizer.state_dict(),
            **schedules,
        }

    def restore(self, state: dict[str, Any], skip_vars: list[str]) -> list[str]:
        """Load a checkpoint's state, except the variables whose name contains one of
        `skip_vars` (the original's --restore_skip_vars): the model's state-dict names,
        `global_step` (then step and learning rates start at 0) and the optimizer states
        `Adam_AE` / `Adam_PC`. Any skipping starts the optimizer states afresh. Returns the
        names skipped."""
        def skipped(name: str) -> bool:
            return any(skip_matches(s, name, state) for s in skip_vars)

        names = [*state["model"], "global_step", "Adam_AE", "Adam_PC"]
        model_state = {k: v for k, v in state["model"].items() if not skipped(k)}
        try:
            missing, unexpected = self.model.load_state_dict(model_state, strict=False)
        except RuntimeError as e:  # shapes that do not fit
            raise ckpt.CheckpointError(
                f"checkpoint does not fit the configured model: {e}") from e
        missing = [k for k in missing if not skipped(k)]
        if missing or unexpected:
            raise ckpt.CheckpointError(
                "checkpoint does not fit the configured model "
                f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
            )
        if skipped("global_step"):
            self.step = 0
            return [n for n in names if skipped(n)]
        self.step = int(state["step"])
        # Shipped checkpoints hold no optimizer states (imgcomp.checkpoints.ship): Adam starts
        # afresh.
        if not skip_vars and "ae_optimizer" in state:
            self.ae_optimizer.load_state_dict(state["ae_optimizer"])
            self.pc_optimizer.load_state_dict(state["pc_optimizer"])
        return [n for n in names if skipped(n)]


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    world, device = init_world(select_device(args.device))
    console = _ConsoleLog(world.is_main)
    finished = False
    try:
        exit_code = train(args, world, device, console)
        finished = True  # the ranks agreed on the step to stop at
        return exit_code
    except (ConfigError, DatasetError, ckpt.CheckpointError) as e:
        _log.error(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C (_StopRequest), or one before training started: each rank stops
        # where it is, so waiting for the others could hang.
        _log.error("Interrupted; exiting without saving.")
        return 130
    finally:
        console.close()
        close_world(world, finished)


class _ConsoleLog:
    """The handlers of train.py's console lines (`_log`): on the main rank, info lines to
    stdout and errors to stderr, both also to LOG_DIR/console.log from `to_file` on (the
    lines logged before the log dir exists are held until then and written first); on the
    other ranks, errors to stderr only."""

    def __init__(self, is_main: bool) -> None:
        _log.propagate = False
        _log.setLevel(logging.INFO if is_main else logging.ERROR)
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(logging.ERROR)
        self._handlers: list[logging.Handler] = [err]
        if is_main:
            out = logging.StreamHandler(sys.stdout)
            out.addFilter(lambda record: record.levelno < logging.ERROR)
            # Holds every line until to_file gives it the file to write them to.
            self._early = MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
            self._handlers += [out, self._early]
        for handler in self._handlers:
            _log.addHandler(handler)

    def to_file(self, log_dir: Path) -> None:
        """Log into LOG_DIR/console.log too, after the lines held so far. Appended (a log
        dir continued by --restore_continue keeps its earlier runs' lines), not atomic: a
        log grows line by line, and a kill can at worst cut its last line short."""
        file = logging.FileHandler(log_dir / CONSOLE_LOG_NAME, mode="a", encoding="utf-8")
        self._early.setTarget(file)
        self._early.flush()
        self._early.close()
        _log.removeHandler(self._early)
        self._handlers.remove(self._early)
        self._handlers.append(file)
        _log.addHandler(file)

    def close(self) -> None:
        for handler in self._handlers:
            _log.removeHandler(handler)
            handler.close()


def _load_configs(args: argparse.Namespace, is_main: bool) -> tuple[Config, Config]:
    """The AE and PC configs; their notes about unused keys (on the main rank) go to `_log`
    like every console line."""
    ae_cfg, ae_notes = load_config_with_notes(args.ae_config, AE_SCHEMA)
    pc_cfg, pc_notes = load_config_with_notes(args.pc_config, PC_SCHEMA)
    if is_main:
        for note in ae_notes + pc_notes:
            _log.info(f"note: {note}")
    return ae_cfg, pc_cfg


def train(args: argparse.Namespace, world: World, device: torch.device,
          console: _ConsoleLog) -> int:
    """train.py on this rank; returns the exit code."""
    for note in resolve_restore_flags(args):
        _log.info(f"note: {note}")
    ae_cfg, pc_cfg = _load_configs(args, world.is_main)
    config_changes = _check_restore_continue(args, ae_cfg, pc_cfg)
    _seed_everything(args.seed)
    train_loader, num_train, test_loader = _make_loaders(args, ae_cfg, world)
    trainer = Trainer(ae_cfg, pc_cfg, device, num_train, world)
    if args.restore:
        _restore(args, trainer)
        # Resume the data order at the epoch the restored step belongs to.
        train_loader.set_epoch(
            trainer.step * ae_cfg.batch_size * world.world_size // num_train)
    if args.max_steps is not None and trainer.step >= args.max_steps:
        _log.info(f"Global step {trainer.step} already >= --max_steps {args.max_steps}; "
                  "nothing to do.")
        return 0
    outputs = None
    if world.is_main:
        log_dir = _make_log_dir(args, ae_cfg, pc_cfg, trainer.step, config_changes)
        console.to_file(log_dir)
        _log.info(
            f"Log dir: {log_dir}\nDevice: {device}; {num_train} training images; "
            f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters; "
            f"{world.world_size} process(es) x batch {ae_cfg.batch_size}")
        outputs = _MainOutputs(args, trainer, test_loader, log_dir,
                               continued=bool(args.restore and args.restore_continue))
    return _train_loop(args, trainer, train_loader, outputs)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_loaders(args: argparse.Namespace, ae_cfg: Config, world: World
                  ) -> tuple[EpochDataLoader, int, EpochDataLoader | None]:
    """(this rank's shard of the training set, the training set's size, the test loader or
    None with --log_interval_test < 1, which does not load the test set)."""
    crop = tuple(ae_cfg.crop_size)
    train_loader, num_train = make_loader(
        args.dataset_train, crop, ae_cfg.batch_size, train=True, num_workers=args.num_workers,
        seed=args.seed, rank=world.rank, world_size=world.world_size, flip=ae_cfg.random_flip)
    test_loader = None
    if args.log_interval_test >= 1:
        test_loader, _ = make_loader(
            args.dataset_test, crop, ae_cfg.batch_size, train=False, num_workers=0,
            seed=args.seed)
    return train_loader, num_train, test_loader


def _restore(args: argparse.Namespace, trainer: Trainer) -> None:
    """--restore (and --from_identity, resolved into it): the checkpoint into `trainer`."""
    restore_path = ckpt.checkpoint_path(args.restore, args.restore_itr)
    skip = restore_skip_vars(args)
    state = ckpt.load_checkpoint(restore_path, trainer.device)
    skipped = trainer.restore(state, skip)
    if skip:
        model_vars = [n for n in skipped if n in state["model"]]
        others = [n for n in skipped if n not in state["model"]]
        _log.info(f"Not restored (--restore_skip_vars {','.join(skip)}): {len(model_vars)} model "
            f"variable(s){': ' + ', '.join(model_vars[:5]) if model_vars else ''}"
            f"{' ...' if len(model_vars) > 5 else ''}"
            f"{'; ' + ', '.join(others) if others else ''}; optimizer states start afresh")
        unmatched = [v for v in skip if not any(skip_matches(v, n, state) for n in skipped)]
        if unmatched:
            _log.info(f"note: --restore_skip_vars {', '.join(unmatched)} matches no variable")
    fresh = ("" if "ae_optimizer" in state
             else "; the original's: its Adam slots are dropped, Adam starts afresh"
             if "tf_names" in state else "; no optimizer states in it, Adam starts afresh")
    _log.info(f"Restored {restore_path} (step {trainer.step}{fresh})")


def _check_restore_continue(args: argparse.Namespace, ae_cfg: Config, pc_cfg: Config
                            ) -> list[str]:
    """With --restore_continue: refuse a log dir of the original, and configs that differ
    from the log dir's flattened ones unless --restore_allow_config_change; returns the
    changes (one line per key) that the run is allowed to make. Every rank checks, so all
    refuse alike."""
    if not (args.restore and args.restore_continue):
        return []
    ckpt_dir = ckpt.ckpt_dir_of(args.restore)
    if ckpt.is_tf_ckpt_dir(ckpt_dir):
        raise ckpt.CheckpointError(
            f"{args.restore} was written by the original (TF checkpoints): restore it "
            "without --restore_continue, into a new log dir, or convert it first "
            "(imgcomp convert)")
    changes = ckpt.config_changes(ckpt.read_configs(ckpt_dir), (ae_cfg, pc_cfg))
    if changes and not args.restore_allow_config_change:
        raise ckpt.CheckpointError(
            f"--restore_continue: the configs differ from those {ckpt_dir} was trained with:\n"
            + "".join(f"  {line}\n" for line in changes)
            + "Pass --restore_allow_config_change to continue with the new ones (the old "
            "ones are kept beside them), or restore without --restore_continue into a new "
            "log dir.")
    return changes


def _make_log_dir(args: argparse.Namespace, ae_cfg: Config, pc_cfg: Config, step: int,
                  config_changes: list[str]) -> Path:
    """The run's log dir (the restored one with --restore_continue, else a new one), with the
    flattened configs in its ckpts/ (the replaced ones kept beside them when
    `config_changes`, which are logged) and --description appended to its description
    file."""
    if args.restore and args.restore_continue:
        log_dir = ckpt.ckpt_dir_of(args.restore).parent
    else:
        log_dir_root = args.log_dir_root
        if args.temporary:
            log_dir_root = log_dir_root.rstrip(os.sep) + "_TMP"
        log_dir = ckpt.make_log_dir(log_dir_root, args.ae_config, args.pc_config,
                                    restore_dir=args.restore)
    ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
    if config_changes:
        kept = ", ".join(str(p.relative_to(log_dir))
                         for p in ckpt.keep_old_configs(ckpt_dir, step))
        _log.info(f"Configs changed at step {step} (--restore_allow_config_change); the old "
                  f"ones are kept as {kept}:\n" + "\n".join(f"  {line}" for line in config_changes))
        _append_description(log_dir, step, f"configs changed (old ones kept as {kept}): "
                            + "; ".join(config_changes))
    ckpt.write_configs(ckpt_dir, ae_cfg, pc_cfg)
    if args.description:
        _append_description(log_dir, step, args.description)
    return log_dir


def _append_description(log_dir: Path, step: int, text: str) -> None:
    """One line at the end of the log dir's description file. An append, not an atomic
    rewrite: the lines already there are never touched, and a kill can at worst cut the
    new last line short, in a file that people read and no code parses."""
    with open(log_dir / DESCRIPTION_NAME, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  step {step}  {text}\n")


def _batches_forever(loader: EpochDataLoader) -> Iterator[torch.Tensor]:
    """Iterate epochs back to back (each new iteration of the loader reshuffles)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise DatasetError(
                "the training set yields no full batch: it has fewer images than batch_size"
            )


class _StopRequest:
    """Turns SIGTERM and Ctrl-C (SIGINT) into a flag checked between steps, so that a step is
    taken as a whole (both optimizers or neither) and then checkpointed. A second Ctrl-C
    raises KeyboardInterrupt at once: the run exits without saving (the last checkpoint
    stays as it was: checkpoints are written atomically)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self._announce = announce
        # Data loader workers forked from this process inherit the handler; they leave
        # stopping to this process (they stop when it does).
        self._pid = os.getpid()
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            return
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        if self._announce and signum == signal.SIGINT:
            # os.write to the stderr descriptor, not print: the handler may run inside a
            # print of the loop.
            os.write(2, b"\nCtrl-C: stopping after this step and saving it "
                     b"(Ctrl-C again: exit at once, without saving)\n")

    def close(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def _train_loop(args: argparse.Namespace, trainer: Trainer, train_loader: EpochDataLoader,
                outputs: _MainOutputs | None) -> int:
    """Every rank steps until --max_steps, SIGTERM (143), Ctrl-C (130) or a non-finite loss
    (1); on the main rank, `outputs` logs, tests and checkpoints (None on the others), and
    checkpoints the last step when stopping. A second Ctrl-C raises KeyboardInterrupt."""
    world, device = trainer.world, trainer.device
    stop = _StopRequest(announce=world.is_main)
    exit_code = 0
    try:
        for x in _batches_forever(train_loader):
            x = x.to(device, non_blocking=True)
            terms = trainer.train_step(x)
            if terms is None:
                if world.is_main:
                    outputs.report_nan_loss()
                return 1
            if world.is_main:
                outputs.after_step(terms, x)
            # One flag for all ranks, so that they stop at the same step.
            stopping = any_rank(stop.requested, world, device)
            if args.max_steps is not None and trainer.step >= args.max_steps:
                if world.is_main:
                    _log.info(f"Reached --max_steps {args.max_steps}.")
                break
            if stopping:
                # A rank stopped by another rank's signal exits as if terminated.
                signum = stop.signum or signal.SIGTERM
                if world.is_main:
                    _log.info(f"{signal.Signals(signum).name} received; stopping.")
                exit_code = 128 + signum
                break
        if world.is_main:
            outputs.save_unsaved_step()
    finally:
        stop.close()
        if world.is_main:
            outputs.close()
    return exit_code


class _MainOutputs:
    """What the main rank writes during the loop, each at its interval: train summaries
    (console and TensorBoard), test results and checkpoints."""

    def __init__(self, args: argparse.Namespace, trainer: Trainer,
                 test_loader: EpochDataLoader | None, log_dir: Path, continued: bool) -> None:
        self.args, self.trainer, self.test_loader = args, trainer, test_loader
        self.ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
        self.run_start = time.time()  # --ckpt_interval counts from here
        # TensorBoard events are append-only streams of CRC'd records: a kill cuts at most
        # the last record, which readers skip. A run continuing a log dir hides the
        # summaries of the steps after its checkpoint (the interrupted run's lost steps,
        # which it takes again) from TensorBoard.
        self.writer = SummaryWriter(log_dir=str(log_dir),
                                    purge_step=trainer.step + 1 if continued else None)
        self.last_saved_step = trainer.step
        # img/s of the last train summary's interval, all ranks together, training only.
        self.interval_start, self.interval_images = time.time(), 0
        # The ETA, from the steps per second of that interval, tests and saves included.
        self.eta_since = (time.time(), trainer.step)

    def after_step(self, terms: LossTerms, x: torch.Tensor) -> None:
        args, trainer, step = self.args, self.trainer, self.trainer.step
        self.interval_images += len(x) * trainer.world.world_size
        if step % args.log_interval_train == 0:
            img_per_s = self.interval_images / max(time.time() - self.interval_start, 1e-9)
            lr = trainer.learning_rates(step)[0][0]  # the autoencoder's, of the next update
            _log_train(self.writer, step, terms, lr, img_per_s, trainer.model, self._eta(step))
            sample = x[:2]
            _log_images(self.writer, step, sample, _sample_reconstruction(trainer.model, sample))
            self.interval_start, self.interval_images = time.time(), 0
            self.eta_since = (time.time(), step)
        if args.log_interval_test >= 1 and step % args.log_interval_test == 0:
            eval_start = time.time()
            metrics = trainer.evaluate(itertools.islice(self.test_loader, args.num_test_batches))
            _log_test(self.writer, step, metrics)
            self.interval_start += time.time() - eval_start  # img/s counts training only
        if step % args.log_interval_save == 0:
            self.save("interval")

    def _eta(self, step: int) -> datetime.timedelta | None:
        """Time left until --max_steps at the step rate since the last train summary; None
        without --max_steps."""
        if self.args.max_steps is None:
            return None
        since_time, since_step = self.eta_since
        seconds_per_step = (time.time() - since_time) / max(step - since_step, 1)
        return datetime.timedelta(seconds=round(seconds_per_step * (self.args.max_steps - step)))

    def save(self, reason: str) -> None:
        path = ckpt.save_checkpoint(
            self.ckpt_dir, self.trainer.step, self.trainer.state_dict(),
            keep=self.args.keep_ckpts, keep_every_hours=self.args.ckpt_interval,
            run_start=self.run_start,
        )
        self.last_saved_step = self.trainer.step
        _log.info(f"Saved {path} ({reason})")

    def save_unsaved_step(self) -> None:
        """Checkpoint the last step unless it was just saved (Ctrl-C, SIGTERM, --max_steps)."""
        if self.trainer.step != self.last_saved_step:
            self.save("last step")

    def report_nan_loss(self) -> None:
        saved = ckpt.list_checkpoints(self.ckpt_dir)
        last_good = f"{saved[-1][1]}" if saved else "none (no checkpoint saved yet)"
        _log.error(f"error: loss is NaN/inf at step {self.trainer.step + 1}; stopping without "
                   f"saving. Last good checkpoint: {last_good}")

    def close(self) -> None:
        self.writer.close()


def _log_train(writer: SummaryWriter, step: int, terms: LossTerms, lr: float,
               img_per_s: float, model: ImageCodec, eta: datetime.timedelta | None) -> None:
    _log.info(
        f"{step:7d}: loss={float(terms.total.detach()):.4f}  ms_ssim={float(terms.ms_ssim):.4f}  "
        f"psnr={float(terms.psnr):.2f}  bpp={float(terms.bpp):.4f}  "
        f"H_real={float(terms.H_real):.4f}  lr={lr:.2e}  {img_per_s:.1f} img/s"
        + ("" if eta is None else f"  eta {eta}"))
    for name in ("total", "distortion", "rate_loss", "reg_enc_dec", "ms_ssim", "mse", "psnr",
                 "bpp", "H_real", "H_mask", "H_soft"):
        writer.add_scalar(f"train/{name}", float(getattr(terms, name).detach()), step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/img_per_s", img_per_s, step)
    writer.add_histogram("train/centers", model.quantizer.centers.detach().cpu(), step)


@torch.no_grad()
def _sample_reconstruction(model: ImageCodec, x: torch.Tensor) -> CodecOutput:
    """The eval-mode (qhard) forward of a few training images, for TensorBoard."""
    model.eval()
    return model(x)


def _log_images(writer: SummaryWriter, step: int, x: torch.Tensor, out: CodecOutput) -> None:
    writer.add_images("input", x.cpu() / 255.0, step)
    writer.add_images("output", out.x_hat.cpu() / 255.0, step)
    if out.mask is not None:
        writer.add_images("heatmap", out.mask.mean(1, keepdim=True).cpu(), step)


def _log_test(writer: SummaryWriter, step: int, metrics: dict[str, float]) -> None:
    _log.info(
        f"{step:7d}: [test] ms_ssim={metrics['ms_ssim']:.4f}  psnr={metrics['psnr']:.2f}  "
        f"bpp={metrics['bpp']:.4f}  H_real={metrics['H_real']:.4f}")
    for name, value in metrics.items():
        writer.add_scalar(f"test/{name}", value, step)


if __name__ == "__main__":
    sys.exit(main())
