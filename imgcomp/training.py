"""Training: optimizers and schedules from the configs, the loop, logging and checkpoints.

`python train.py AE_CONFIG PC_CONFIG ...` calls `main`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from imgcomp import checkpoint as ckpt
from imgcomp.config import Config, ConfigError, load_config
from imgcomp.data import DatasetError, make_loader
from imgcomp.distributed import World, all_ranks_agree, any_rank, close_world, init_world
from imgcomp.losses import LossTerms, compute_loss
from imgcomp.model import ImageCodec


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# `--restore DIR` with these skipped, as the original's --from_identity (RestoreManager).
FROM_IDENTITY_SKIP_VARS = "global_step,Adam"
DESCRIPTION_NAME = "description.txt"


def build_arg_parser() -> argparse.ArgumentParser:
    """The original train.py's flags (same names, short forms, defaults and meaning) and,
    in their own group, the port's."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train the CVPR 2018 image codec (autoencoder + probability classifier).",
    )
    p.add_argument("ae_config", help="autoencoder config, e.g. ae_configs/cvpr/low")
    p.add_argument(
        "pc_config", help="probability classifier config, e.g. pc_configs/cvpr/res_shallow"
    )
    p.add_argument(
        "--dataset_train", "-dtrain", default="imgnet_train", metavar="DATASET",
        help="imgnet_train (TFRecords $RECORDS_ROOT/train/*.tfrecord; the default), a quoted "
        "glob or a directory of images",
    )
    p.add_argument("--dataset_test", "-dtest", default="imgnet_test", metavar="DATASET",
                   help="as --dataset_train; default imgnet_test ($RECORDS_ROOT/val)")
    p.add_argument(
        "--dataset_codec_distance", "-dcodec", metavar="DATASET",
        help="accepted and ignored (the original logged the test set's distance to BPG, from "
        "BPG measures this port does not have; its default was testset)",
    )
    p.add_argument("--log_dir_root", "-o", default="logs", metavar="LOG_DIR_ROOT",
                   help="where the job's log dir is made (default logs)")
    p.add_argument(
        "--log_interval_train", "-ltrain", type=_positive_int, default=100, metavar="STEPS",
        help="console + TensorBoard train summaries every STEPS (default 100)",
    )
    p.add_argument(
        "--log_interval_save", "-lsave", type=_positive_int, default=1000, metavar="STEPS",
        help="checkpoint every STEPS (default 1000)",
    )
    p.add_argument(
        "--log_interval_test", "-ltest", type=int, default=1000, metavar="STEPS",
        help="evaluate on the test set (qhard) every STEPS (default 1000); -1 (any value "
        "< 1): no testing, and the test set is not loaded",
    )
    p.add_argument("--log_run_metadata", "-lmeta", action="store_true",
                   help="accepted and ignored (TensorFlow run metadata)")
    p.add_argument("--summarize_gradients", "-lgrads", action="store_true",
                   help="accepted and ignored (the original ignored it too)")
    p.add_argument("--temporary", "-t", action="store_true",
                   help="append _TMP to LOG_DIR_ROOT")
    p.add_argument(
        "--from_identity", metavar="IDENTITY_CKPT_DIR",
        help=f"like --restore IDENTITY_CKPT_DIR --restore_skip_vars {FROM_IDENTITY_SKIP_VARS}: "
        "the weights only; step, schedules and optimizer states start afresh",
    )
    p.add_argument("--restore", "-r", metavar="RESTORE_DIR",
                   help="log dir or its ckpts/ to restore from; without --restore_continue "
                   "the new log dir's name ends in RESTORE@<root>@<job id>")
    p.add_argument(
        "--restore_itr", "-i", type=int, default=-1, metavar="STEP",
        help="restore the latest checkpoint with step <= STEP (-1, the default: the latest)",
    )
    p.add_argument(
        "--restore_continue", action="store_true",
        help="keep writing into the restored log dir instead of a new one",
    )
    p.add_argument(
        "--restore_skip_vars", metavar="A,B",
        help="do not restore variables whose name contains A or B: the model's parameter "
        "and buffer names (e.g. 'probclass', 'quantizer.centers'), 'global_step' (step and "
        "learning rate schedules then start at 0) and 'Adam_AE' / 'Adam_PC' (the optimizer "
        "states). Skipping anything starts the optimizer states afresh",
    )
    p.add_argument(
        "--ckpt_interval", type=_non_negative_float, default=1.0, metavar="HOURS",
        help="besides the newest --keep_ckpts checkpoints, keep one checkpoint every HOURS "
        "(default 1): a checkpoint leaving that window is kept for good if it was written "
        ">= HOURS after the last one kept so (or after the run's start); 0 keeps them all",
    )
    p.add_argument("--description", "-d", metavar="TEXT",
                   help="appended to LOG_DIR/description.txt (the original sent it to a "
                   "Google Sheet)")
    port = p.add_argument_group("flags of the port only")
    port.add_argument("--max_steps", type=int, help="stop when the global step reaches this")
    port.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto (default) uses CUDA when present",
    )
    port.add_argument("--num_workers", type=int, default=2, help="data loader processes")
    port.add_argument(
        "--num_test_batches", type=int, default=10, help="test batches per evaluation (default 10)"
    )
    port.add_argument(
        "--keep_ckpts", type=int, default=5,
        help="newest checkpoints kept in ckpts/ (default 5, 0 = all); see --ckpt_interval",
    )
    port.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return p


def resolve_restore_flags(args: argparse.Namespace) -> list[str]:
    """Apply --from_identity (as the original's RestoreManager: it becomes --restore, with
    --restore_skip_vars global_step,Adam) and return the notes on accepted-but-ignored
    flags, one console line each."""
    notes = []
    if args.from_identity:
        if args.restore and args.restore != args.from_identity:
            notes.append(f"--from_identity {args.from_identity} replaces --restore "
                         f"{args.restore}")
        if args.restore_skip_vars and args.restore_skip_vars != FROM_IDENTITY_SKIP_VARS:
            notes.append(f"--from_identity: --restore_skip_vars {FROM_IDENTITY_SKIP_VARS} "
                         f"replaces {args.restore_skip_vars}")
        args.restore, args.restore_skip_vars = args.from_identity, FROM_IDENTITY_SKIP_VARS
    if args.dataset_codec_distance:
        notes.append("--dataset_codec_distance is ignored: the distance to BPG needs BPG "
                     "measures, which this port does not have")
    if args.log_run_metadata:
        notes.append("--log_run_metadata is ignored: TensorFlow run metadata has no "
                     "PyTorch counterpart here")
    if args.summarize_gradients:
        notes.append("--summarize_gradients is ignored (the original ignored it too)")
    if args.description:
        notes.append(f"--description goes to LOG_DIR/{DESCRIPTION_NAME}, not to a Google "
                     "Sheet")
    return notes


def write_description(log_dir: Path, description: str, step: int) -> Path:
    """Append `description` to LOG_DIR/description.txt with the time and the starting step."""
    path = log_dir / DESCRIPTION_NAME
    with open(path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  step {step}  {description}\n")
    return path


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


class TF1Adam(torch.optim.Adam):
    """Adam with TensorFlow 1's epsilon, added to sqrt(v) *before* the bias correction
    (TF's "epsilon hat"): PyTorch's eps scaled by 1 / sqrt(1 - beta2^t) at each step t.
    Differs from PyTorch's Adam for gradients below ~eps / sqrt(1 - beta2^t)."""

    def __init__(self, params, lr: float, eps: float = 1e-8, **kwargs) -> None:
        super().__init__(params, lr=lr, eps=eps, **kwargs)
        self.tf_eps = eps

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            # All parameters of a group have taken the same number of steps.
            state = self.state.get(group["params"][0], {})
            t = 1 + (int(state["step"]) if "step" in state else 0)
            group["eps"] = self.tf_eps / math.sqrt(1.0 - group["betas"][1] ** t)
        return super().step(closure)


def _make_optimizer(params, cfg: Config, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "ADAM":
        # The fused kernel updates all parameters in one call (CPU and CUDA).
        adam = TF1Adam if cfg.adam_epsilon == "tf1" else torch.optim.Adam
        return adam(params, lr=lr, fused=True)
    if cfg.optimizer == "MOMENTUM":  # tf.train.MomentumOptimizer(use_nesterov=True)
        return torch.optim.SGD(params, lr=lr, momentum=cfg.optimizer_momentum, nesterov=True)
    return torch.optim.SGD(params, lr=lr)


def steps_per_epoch(ae_cfg: Config, num_train_images: int, world_size: int) -> float:
    """Steps of one epoch for the DECAY schedules: the original's integer
    num_images // batch_size ('floor'), or the exact ratio ('exact')."""
    batch = ae_cfg.batch_size * world_size
    if ae_cfg.epoch_steps == "floor":
        return max(num_train_images // batch, 1)
    return max(num_train_images / batch, 1e-9)


def lr_factor(cfg: Config, step: int, steps_per_epoch: float) -> float:
    """DECAY: lr_initial * rate^(epoch / interval), the exponent floored when staircase."""
    if cfg.lr_schedule == "FIXED":
        return 1.0
    exponent = step / (steps_per_epoch * cfg.lr_schedule_decay_interval)
    if cfg.lr_schedule_decay_staircase:
        exponent = math.floor(exponent)
    return cfg.lr_schedule_decay_rate**exponent


def skip_matches(pattern: str, name: str, state: dict[str, Any]) -> bool:
    """--restore_skip_vars: `pattern` is part of the variable's name (for a checkpoint of the
    original, also of its TF variable name)."""
    return pattern in name or pattern in state.get("tf_names", {}).get(name, "")


class Trainer:
    """Holds model, optimizers and schedules; one `train_step` per batch.

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
        centers_lr = ae_cfg.lr_initial * (ae_cfg.lr_centers_factor or 1.0)
        self.ae_optimizer = _make_optimizer(
            [
                {"params": self.model.autoencoder.parameters()},
                {"params": self.model.quantizer.parameters(), "lr": centers_lr},
            ],
            ae_cfg,
            ae_cfg.lr_initial,
        )
        self.pc_optimizer = _make_optimizer(
            self.model.probclass.parameters(), pc_cfg, pc_cfg.lr_initial
        )
        epoch = steps_per_epoch(ae_cfg, num_train_images, world.world_size)
        self.ae_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.ae_optimizer, lambda s: lr_factor(ae_cfg, s, epoch)
        )
        self.pc_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.pc_optimizer, lambda s: lr_factor(pc_cfg, s, epoch)
        )

    def train_step(self, x: torch.Tensor) -> LossTerms | None:
        """One optimization step; returns the loss terms, or None (and no update) when the
        loss is not finite."""
        self.model.train()
        out = self.forward(x)
        terms = compute_loss(self.model, out, x, self.ae_cfg, self.pc_cfg)
        finite = bool(torch.isfinite(terms.total))
        # Every rank must agree, or the others would wait forever in the gradient all-reduce.
        if not all_ranks_agree(finite, self.world, self.device):
            return None
        self.ae_optimizer.zero_grad(set_to_none=True)
        self.pc_optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        # A frozen part keeps no gradients, so its optimizer step leaves it unchanged while
        # the schedules still follow the global step.
        if not self.ae_cfg.train_autoencoder:
            self.ae_optimizer.zero_grad(set_to_none=True)
        if not self.ae_cfg.train_probclass:
            self.pc_optimizer.zero_grad(set_to_none=True)
        self.ae_optimizer.step()
        self.pc_optimizer.step()
        self.ae_schedule.step()
        self.pc_schedule.step()
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
        return {
            "model": self.model.state_dict(),
            "ae_optimizer": self.ae_optimizer.state_dict(),
            "pc_optimizer": self.pc_optimizer.state_dict(),
            "ae_schedule": self.ae_schedule.state_dict(),
            "pc_schedule": self.pc_schedule.state_dict(),
        }

    def restore(self, state: dict[str, Any], skip_vars: list[str]) -> list[str]:
        """Load a checkpoint's state, except the variables whose name contains one of
        `skip_vars` (the original's --restore_skip_vars): the model's state-dict names,
        `global_step` (then step and schedules start at 0) and the optimizer states
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
            self.step = 0  # the schedules stay where they are: at step 0
            return [n for n in names if skipped(n)]
        self.step = int(state["step"])
        # Shipped checkpoints hold no optimizer states (imgcomp.ship): Adam starts afresh.
        if not skip_vars and "ae_optimizer" in state:
            self.ae_optimizer.load_state_dict(state["ae_optimizer"])
            self.pc_optimizer.load_state_dict(state["pc_optimizer"])
        # The learning rates are a function of the step (also for checkpoints of the original,
        # which hold no schedules), with this run's configured base rates: a checkpoint's own
        # must not override a new config.
        for schedule in (self.ae_schedule, self.pc_schedule):
            schedule.last_epoch, schedule._step_count = self.step, self.step + 1
            lrs = [base * fn(self.step)
                   for base, fn in zip(schedule.base_lrs, schedule.lr_lambdas, strict=True)]
            for group, lr in zip(schedule.optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr
            schedule._last_lr = lrs
        return [n for n in names if skipped(n)]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches_forever(loader) -> Iterator[torch.Tensor]:
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
    """Turns SIGTERM into a flag checked between steps, so the last step is checkpointed."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _log_train(
    writer: SummaryWriter, trainer: Trainer, terms: LossTerms, x: torch.Tensor, img_per_s: float
) -> None:
    step = trainer.step
    lr = trainer.ae_optimizer.param_groups[0]["lr"]
    print(
        f"{step:7d}: loss={float(terms.total.detach()):.4f}  ms_ssim={float(terms.ms_ssim):.4f}  "
        f"psnr={float(terms.psnr):.2f}  bpp={float(terms.bpp):.4f}  "
        f"H_real={float(terms.H_real):.4f}  lr={lr:.2e}  {img_per_s:.1f} img/s",
        flush=True,
    )
    for name in ("total", "distortion", "rate_loss", "reg_enc_dec", "ms_ssim", "mse", "psnr",
                 "bpp", "H_real", "H_mask", "H_soft"):
        writer.add_scalar(f"train/{name}", float(getattr(terms, name).detach()), step)
    writer.add_scalar("train/lr", lr, step)
    writer.add_scalar("train/img_per_s", img_per_s, step)
    writer.add_histogram("train/centers", trainer.model.quantizer.centers.detach().cpu(), step)
    with torch.no_grad():
        trainer.model.eval()
        out = trainer.model(x[:2])
    writer.add_images("input", x[:2].cpu() / 255.0, step)
    writer.add_images("output", out.x_hat.cpu() / 255.0, step)
    if out.mask is not None:
        writer.add_images("heatmap", out.mask.mean(1, keepdim=True).cpu(), step)


def _log_test(writer: SummaryWriter, step: int, metrics: dict[str, float]) -> None:
    print(
        f"{step:7d}: [test] ms_ssim={metrics['ms_ssim']:.4f}  psnr={metrics['psnr']:.2f}  "
        f"bpp={metrics['bpp']:.4f}  H_real={metrics['H_real']:.4f}",
        flush=True,
    )
    for name, value in metrics.items():
        writer.add_scalar(f"test/{name}", value, step)


def _test_batches(loader, limit: int) -> Iterator[torch.Tensor]:
    for i, batch in enumerate(loader):
        if i >= limit:
            return
        yield batch


def train(args: argparse.Namespace, world: World, device: torch.device) -> int:
    # Only rank 0 prints, evaluates and writes the log dir, checkpoints and TensorBoard.
    log = print if world.is_main else _silent
    for note in resolve_restore_flags(args):
        log(f"note: {note}")
    ae_cfg, pc_cfg = load_config(args.ae_config), load_config(args.pc_config)
    _seed_everything(args.seed)
    crop = tuple(ae_cfg.crop_size)
    train_loader, num_train = make_loader(
        args.dataset_train,
        crop,
        ae_cfg.batch_size,
        train=True,
        num_workers=args.num_workers,
        seed=args.seed,
        rank=world.rank,
        world_size=world.world_size,
        flip=ae_cfg.random_flip,
    )
    test_loader = None
    if args.log_interval_test >= 1:  # --log_interval_test -1: no testing, no test set
        test_loader, _ = make_loader(
            args.dataset_test, crop, ae_cfg.batch_size, train=False, num_workers=0,
            seed=args.seed)
    trainer = Trainer(ae_cfg, pc_cfg, device, num_train, world)

    log_dir_root = args.log_dir_root
    if args.temporary:
        log_dir_root = log_dir_root.rstrip(os.sep) + "_TMP"
    if args.restore:
        if args.restore_continue and ckpt.is_tf_ckpt_dir(ckpt.ckpt_dir_of(args.restore)):
            raise ckpt.CheckpointError(
                f"{args.restore} was written by the original (TF checkpoints): restore it "
                "without --restore_continue, into a new log dir, or convert it first "
                "(python -m imgcomp.convert)")
        restore_path = ckpt.checkpoint_path(args.restore, args.restore_itr)
        skip = [s.strip() for s in (args.restore_skip_vars or "").split(",") if s.strip()]
        state = ckpt.load_checkpoint(restore_path, device)
        skipped = trainer.restore(state, skip)
        if skip:
            model_vars = [n for n in skipped if n in state["model"]]
            others = [n for n in skipped if n not in state["model"]]
            log(f"Not restored (--restore_skip_vars {','.join(skip)}): {len(model_vars)} model "
                f"variable(s){': ' + ', '.join(model_vars[:5]) if model_vars else ''}"
                f"{' ...' if len(model_vars) > 5 else ''}"
                f"{'; ' + ', '.join(others) if others else ''}; optimizer states start afresh")
            unmatched = [v for v in skip if not any(skip_matches(v, n, state) for n in skipped)]
            if unmatched:
                log(f"note: --restore_skip_vars {', '.join(unmatched)} matches no variable")
        fresh = ("" if "ae_optimizer" in state
                 else "; the original's: its Adam slots are dropped, Adam starts afresh"
                 if "tf_names" in state else "; no optimizer states in it, Adam starts afresh")
        log(f"Restored {restore_path} (step {trainer.step}{fresh})")
        # Resume the data order at the epoch the restored step belongs to.
        train_loader.set_epoch(
            trainer.step * ae_cfg.batch_size * world.world_size // num_train)
    if args.max_steps is not None and trainer.step >= args.max_steps:
        log(f"Global step {trainer.step} already >= --max_steps {args.max_steps}; nothing to do.")
        return 0
    if not world.is_main:
        return _train_loop(args, trainer, train_loader, None, None, world)
    if args.restore and args.restore_continue:
        log_dir = ckpt.ckpt_dir_of(args.restore).parent
    else:
        log_dir = ckpt.make_log_dir(log_dir_root, args.ae_config, args.pc_config,
                                    restore_dir=args.restore)
    ckpt.write_configs(log_dir / ckpt.CKPTS_DIRNAME, ae_cfg, pc_cfg)
    if args.description:
        write_description(log_dir, args.description, trainer.step)
    print(
        f"Log dir: {log_dir}\nDevice: {device}; {num_train} training images; "
        f"{sum(p.numel() for p in trainer.model.parameters()):,} parameters; "
        f"{world.world_size} process(es) x batch {ae_cfg.batch_size}",
        flush=True,
    )
    return _train_loop(args, trainer, train_loader, test_loader, log_dir, world)


def _silent(*args, **kwargs) -> None:
    pass


def _train_loop(args: argparse.Namespace, trainer: Trainer, train_loader, test_loader,
                log_dir: Path | None, world: World) -> int:
    """The loop on every rank; `log_dir` is None except on rank 0, which alone logs, tests
    and saves."""
    device = trainer.device
    ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME if log_dir else None
    run_start = time.time()  # --ckpt_interval counts from here

    def save(reason: str) -> None:
        if ckpt_dir is None:
            return
        path = ckpt.save_checkpoint(
            ckpt_dir, trainer.step, trainer.state_dict(), keep=args.keep_ckpts,
            keep_every_hours=args.ckpt_interval, run_start=run_start,
        )
        print(f"Saved {path} ({reason})", flush=True)

    writer = SummaryWriter(log_dir=str(log_dir)) if log_dir else None
    stop = _StopRequest()
    last_saved_step = trainer.step
    interval_start, interval_images = time.time(), 0
    exit_code = 0
    try:
        for x in _batches_forever(train_loader):
            x = x.to(device, non_blocking=True)
            terms = trainer.train_step(x)
            if terms is None:
                if ckpt_dir is not None:
                    saved = ckpt.list_checkpoints(ckpt_dir)
                    last_good = f"{saved[-1][1]}" if saved else "none (no checkpoint saved yet)"
                    print(
                        f"error: loss is NaN/inf at step {trainer.step + 1}; stopping without "
                        f"saving. Last good checkpoint: {last_good}",
                        file=sys.stderr,
                    )
                return 1
            interval_images += len(x) * world.world_size
            step = trainer.step
            # One flag for all ranks, so that they stop at the same step.
            stopping = any_rank(stop.requested, world, device)
            if writer is None:  # not rank 0
                if stopping:
                    exit_code = 143
                if stopping or (args.max_steps is not None and step >= args.max_steps):
                    break
                continue
            if step % args.log_interval_train == 0:
                img_per_s = interval_images / max(time.time() - interval_start, 1e-9)
                _log_train(writer, trainer, terms, x, img_per_s)
                interval_start, interval_images = time.time(), 0
            if args.log_interval_test >= 1 and step % args.log_interval_test == 0:
                eval_start = time.time()
                metrics = trainer.evaluate(_test_batches(test_loader, args.num_test_batches))
                _log_test(writer, step, metrics)
                interval_start += time.time() - eval_start  # img/s counts training only
            if step % args.log_interval_save == 0:
                save("interval")
                last_saved_step = step
            if args.max_steps is not None and step >= args.max_steps:
                print(f"Reached --max_steps {args.max_steps}.")
                break
            if stopping:
                print("SIGTERM received; stopping.")
                exit_code = 143
                break
    except KeyboardInterrupt:
        print("Interrupted; stopping.")
        exit_code = 130
    finally:
        stop.close()
        if writer is not None:
            writer.close()
    if trainer.step != last_saved_step:
        save("last step")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    world, device = init_world(select_device(args.device))
    finished = False
    try:
        exit_code = train(args, world, device)
        # Ranks agree on when to stop, except after Ctrl-C (130), which each rank may catch at
        # a different step: waiting for the others could then hang.
        finished = exit_code != 130
        return exit_code
    except (ConfigError, DatasetError, ckpt.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        close_world(world, finished)


if __name__ == "__main__":
    sys.exit(main())
