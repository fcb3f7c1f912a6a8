"""The Trainer: the model (DDP-wrapped under torchrun), its two optimizers and learning rates,
one training step, evaluation on test batches, and its state for checkpoints and restores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from imgcomp.base.distributed import World, all_ranks_agree
from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config
from imgcomp.train.heap import TrainingHeap
from imgcomp.train.losses import LossTerms, compute_loss
from imgcomp.train.optimization import learning_rate, make_optimizer, steps_per_epoch


def skip_matches(pattern: str, name: str, state: dict[str, Any]) -> bool:
    """--restore_skip_vars: `pattern` is part of the variable's name (for a checkpoint of the
    original, also of its TF variable name)."""
    return pattern in name or pattern in state.get("tf_names", {}).get(name, "")


class Trainer:
    """Holds model and optimizers; one `train_step` per batch.

    Under torchrun the model is wrapped in DistributedDataParallel (gradients averaged over
    ranks). BatchNorm stays plain: each rank normalizes with its own batch's statistics and
    the running statistics are broadcast from rank 0 at every forward (DDP's default), so
    evaluation and checkpoints use rank 0's. `batch_size` is per process.

    With `bf16`, the training forward runs under bfloat16 autocast (the convolutions in
    bfloat16); the loss (MS-SSIM on the reconstruction cast to float32), the quantizer's
    centres, the weights, their gradients and Adam stay float32, and `evaluate` is float32.
    """

    def __init__(
        self, ae_cfg: Config, pc_cfg: Config, device: torch.device, num_train_images: int,
        world: World | None = None, bf16: bool = False,
    ) -> None:
        world = world or World()
        self.ae_cfg, self.pc_cfg, self.device, self.world = ae_cfg, pc_cfg, device, world
        self.bf16 = bf16
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
        terms = self.training_loss(x)
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

    def training_loss(self, x: torch.Tensor) -> LossTerms:
        """The training forward and its loss terms (the model's mode as it is)."""
        # channels_last makes the autoencoder's convolutions (forward and backward) up to ~1.8x
        # faster on CPU (oneDNN needs no reorders); every layer keeps its input's layout.
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.forward(x)
        # MS-SSIM's variances (E[x^2] - E[x]^2) would cancel away in bfloat16.
        out = out._replace(x_hat=out.x_hat.float())
        return compute_loss(self.model, out, x, self.ae_cfg, self.pc_cfg)

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
