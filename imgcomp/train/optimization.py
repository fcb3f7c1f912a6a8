"""Optimizers and learning-rate schedules from the configs.

The learning rate is a pure function of the global step (`learning_rate`): the trainer sets
it on the optimizers before each update, so a restored step gets its rate back with no
scheduler state to restore.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from imgcomp.config.parsing import Config


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


def make_optimizer(params: Iterable, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """cfg.optimizer: ADAM (TF1's epsilon with adam_epsilon = tf1), MOMENTUM (Nesterov's, as
    the original's tf.train.MomentumOptimizer(use_nesterov=True)) or plain SGD."""
    if cfg.optimizer == "ADAM":
        # The fused kernel updates all parameters in one call (CPU and CUDA).
        adam = TF1Adam if cfg.adam_epsilon == "tf1" else torch.optim.Adam
        return adam(params, lr=lr, fused=True)
    if cfg.optimizer == "MOMENTUM":
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


def learning_rate(cfg: Config, step: int, steps_per_epoch: float, scale: float = 1.0) -> float:
    """The rate of the update from `step` to `step + 1`: the base rate cfg.lr_initial * scale
    (scale: the centres' lr_centers_factor), times the schedule's factor at `step`."""
    # Base rate first, then the factor: the rounding of the LambdaLR schedules of earlier
    # versions, so runs resumed from their checkpoints continue with bit-identical rates.
    return cfg.lr_initial * scale * lr_factor(cfg, step, steps_per_epoch)
