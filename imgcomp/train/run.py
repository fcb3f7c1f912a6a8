"""train.py: `main` sets a run up on each rank (configs, loaders, the Trainer, restore, the log
dir) and hands it to the loop (imgcomp.train.loop).

`python train.py AE_CONFIG PC_CONFIG ...` calls `main` (flags: imgcomp.train.flags). Under
torchrun every rank trains; the main rank alone prints, tests and writes the log dir,
checkpoints, TensorBoard events and console.log (imgcomp.train.console).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imgcomp.base.device import select_device
from imgcomp.base.distributed import World, close_world, init_world
from imgcomp.base.image_files import DatasetError
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.config.parsing import Config, ConfigError, load_config_with_notes
from imgcomp.config.schema import AE_SCHEMA, PC_SCHEMA
from imgcomp.data.loaders import EpochDataLoader, make_loader
from imgcomp.train.console import ConsoleLog, log
from imgcomp.train.flags import (
    DESCRIPTION_NAME,
    build_arg_parser,
    resolve_restore_flags,
    restore_skip_vars,
)
from imgcomp.train.loop import MainOutputs, train_loop
from imgcomp.train.trainer import Trainer, skip_matches


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    world, device = init_world(select_device(args.device))
    console = ConsoleLog(world.is_main)
    finished = False
    try:
        exit_code = train(args, world, device, console)
        finished = True  # the ranks agreed on the step to stop at
        return exit_code
    except (ConfigError, DatasetError, ckpt.CheckpointError) as e:
        log.error(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        # A second Ctrl-C (StopRequest), or one before training started: each rank stops
        # where it is, so waiting for the others could hang.
        log.error("Interrupted; exiting without saving.")
        return 130
    finally:
        console.close()
        close_world(world, finished)


def load_configs(args: argparse.Namespace, is_main: bool) -> tuple[Config, Config]:
    """The AE and PC configs; their notes about unused keys (on the main rank) go to `log`
    like every console line."""
    ae_cfg, ae_notes = load_config_with_notes(args.ae_config, AE_SCHEMA)
    pc_cfg, pc_notes = load_config_with_notes(args.pc_config, PC_SCHEMA)
    if is_main:
        for note in ae_notes + pc_notes:
            log.info(f"note: {note}")
    return ae_cfg, pc_cfg


def train(args: argparse.Namespace, world: World, device: torch.device,
          console: ConsoleLog) -> int:
    """train.py on this rank; returns the exit code."""
    for note in resolve_restore_flags(args):
        log.info(f"note: {note}")
    ae_cfg, pc_cfg = load_configs(args, world.is_main)
    config_changes = _check_restore_continue(args, ae_cfg, pc_cfg)
    _seed_everything(args.seed)
    train_loader, num_train, test_loader = _make_loaders(args, ae_cfg, world)
    trainer = Trainer(ae_cfg, pc_cfg, device, num_train, world, bf16=args.bf16)
    if args.restore:
        _restore(args, trainer)
        # Resume the data order at the epoch the restored step belongs to.
        train_loader.set_epoch(
            trainer.step * ae_cfg.batch_size * world.world_size // num_train)
    if args.max_steps is not None and trainer.step >= args.max_steps:
        log.info(f"Global step {trainer.step} already >= --max_steps {args.max_steps}; "
                  "nothing to do.")
        return 0
    outputs = None
    if world.is_main:
        log_dir = _make_log_dir(args, ae_cfg, pc_cfg, trainer.step, config_changes)
        console.to_file(log_dir)
        log.info(
            f"Log dir: {log_dir}\nDevice: {device}; {num_train} training images; "
            f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters; "
            f"{world.world_size} process(es) x batch {ae_cfg.batch_size}")
        outputs = MainOutputs(args, trainer, test_loader, log_dir,
                               continued=bool(args.restore and args.restore_continue))
    return train_loop(args, trainer, train_loader, outputs)


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
        log.info(f"Not restored (--restore_skip_vars {','.join(skip)}): {len(model_vars)} model "
            f"variable(s){': ' + ', '.join(model_vars[:5]) if model_vars else ''}"
            f"{' ...' if len(model_vars) > 5 else ''}"
            f"{'; ' + ', '.join(others) if others else ''}; optimizer states start afresh")
        unmatched = [v for v in skip if not any(skip_matches(v, n, state) for n in skipped)]
        if unmatched:
            log.info(f"note: --restore_skip_vars {', '.join(unmatched)} matches no variable")
    fresh = ("" if "ae_optimizer" in state
             else "; the original's: its Adam slots are dropped, Adam starts afresh"
             if "tf_names" in state else "; no optimizer states in it, Adam starts afresh")
    log.info(f"Restored {restore_path} (step {trainer.step}{fresh})")


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
        log.info(f"Configs changed at step {step} (--restore_allow_config_change); the old "
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


if __name__ == "__main__":
    sys.exit(main())
