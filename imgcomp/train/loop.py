"""The training loop: steps until --max_steps, SIGTERM, Ctrl-C or a non-finite loss, and what
the main rank writes at its intervals: console and TensorBoard summaries, tests, checkpoints."""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from imgcomp.base.distributed import any_rank
from imgcomp.base.image_files import DatasetError
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import CodecOutput, ImageCodec
from imgcomp.data.loaders import EpochDataLoader
from imgcomp.train.console import Progress, log
from imgcomp.train.losses import LossTerms
from imgcomp.train.trainer import Trainer


def batches_forever(loader: EpochDataLoader) -> Iterator[torch.Tensor]:
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


class StopRequest:
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


def train_loop(args: argparse.Namespace, trainer: Trainer, train_loader: EpochDataLoader,
                outputs: MainOutputs | None) -> int:
    """Every rank steps until --max_steps, SIGTERM (143), Ctrl-C (130) or a non-finite loss
    (1); on the main rank, `outputs` logs, tests and checkpoints (None on the others), and
    checkpoints the last step when stopping. A second Ctrl-C raises KeyboardInterrupt."""
    world, device = trainer.world, trainer.device
    stop = StopRequest(announce=world.is_main)
    exit_code = 0
    try:
        for x in batches_forever(train_loader):
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
                    log.info(f"Reached --max_steps {args.max_steps}.")
                break
            if stopping:
                # A rank stopped by another rank's signal exits as if terminated.
                signum = stop.signum or signal.SIGTERM
                if world.is_main:
                    log.info(f"{signal.Signals(signum).name} received; stopping.")
                exit_code = 128 + signum
                break
        if world.is_main:
            outputs.save_unsaved_step()
    finally:
        stop.close()
        if world.is_main:
            outputs.close()
    return exit_code


class MainOutputs:
    """What the main rank writes during the loop, each at its interval: train summaries
    (console and TensorBoard; also at the run's first step and at --max_steps, so a short run
    has its numbers too), test results and checkpoints; and the steps' progress."""

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
        self.first_step = trainer.step + 1
        self.progress = Progress(trainer.step, args.max_steps)

    def after_step(self, terms: LossTerms, x: torch.Tensor) -> None:
        args, trainer, step = self.args, self.trainer, self.trainer.step
        self.interval_images += len(x) * trainer.world.world_size
        if step % args.log_interval_train == 0 or step in (self.first_step, args.max_steps):
            img_per_s = self.interval_images / max(time.time() - self.interval_start, 1e-9)
            lr = trainer.learning_rates(step)[0][0]  # the autoencoder's, of the next update
            _log_train(self.writer, step, terms, lr, img_per_s, trainer.model, self._eta(step))
            sample = x[:2]
            _log_images(self.writer, step, sample, _sample_reconstruction(trainer.model, sample))
            self.interval_start, self.interval_images = time.time(), 0
            self.eta_since = (time.time(), step)
            if step == self.first_step:
                self.writer.flush()  # TensorBoard shows the run from its first step on
        if args.log_interval_test >= 1 and step % args.log_interval_test == 0:
            eval_start = time.time()
            metrics = trainer.evaluate(itertools.islice(self.test_loader, args.num_test_batches))
            _log_test(self.writer, step, metrics)
            self.interval_start += time.time() - eval_start  # img/s counts training only
        if step % args.log_interval_save == 0:
            self.save("interval")
        self.progress.update(step)

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
        log.info(f"Saved {path} ({reason})")

    def save_unsaved_step(self) -> None:
        """Checkpoint the last step unless it was just saved (Ctrl-C, SIGTERM, --max_steps)."""
        if self.trainer.step != self.last_saved_step:
            self.save("last step")

    def report_nan_loss(self) -> None:
        saved = ckpt.list_checkpoints(self.ckpt_dir)
        last_good = f"{saved[-1][1]}" if saved else "none (no checkpoint saved yet)"
        log.error(f"error: loss is NaN/inf at step {self.trainer.step + 1}; stopping without "
                   f"saving. Last good checkpoint: {last_good}")

    def close(self) -> None:
        self.progress.close()
        self.writer.close()


def _log_train(writer: SummaryWriter, step: int, terms: LossTerms, lr: float,
               img_per_s: float, model: ImageCodec, eta: datetime.timedelta | None) -> None:
    log.info(
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
    log.info(
        f"{step:7d}: [test] ms_ssim={metrics['ms_ssim']:.4f}  psnr={metrics['psnr']:.2f}  "
        f"bpp={metrics['bpp']:.4f}  H_real={metrics['H_real']:.4f}")
    for name, value in metrics.items():
        writer.add_scalar(f"test/{name}", value, step)
