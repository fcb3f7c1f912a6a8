"""Encode-time refinement: the latent of one image optimized, with the decoder and the context
model fixed, for the model's own objective (docs/refinement.md says why this one and how it
measured):

    J(z) = distortion(x, decode(Q(z))) + beta * max(H(Q(z)) - H_target, 0)

with the model's distortion and beta (its ae config), H the mean bits per symbol under the
float context model, and H_target the plain encoding's own H: the model's training objective
with the image's own rate as the target, i.e. a better image at about the same rate. Adam
optimizes J relaxed: Q is the model's soft assignment to its centres, its sigma annealed from
the training's value to near-hard, with the rate the cross-entropy expected under it. The
refined symbols are the nearest centres of the last latent, kept only if their true J (hard
symbols) is below the plain encoding's: refinement never worsens the objective. They go
through the unchanged coder: the file has the same format and fingerprint, and the unchanged
decoder reads it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import Config
from imgcomp.evaluation.quality import ms_ssim, psnr_from_mse
from imgcomp.nets.autoencoder import pad_to_multiple

# Adam's step size times the number of steps (cosine decay to 0): the latent moves up to about
# one centre spacing in all, whatever the number of steps (tuned on BSDS500 val crops).
STEP_SIZE_TIMES_STEPS = 1.2
MAX_STEP_SIZE = 0.1
# The soft assignment's sigma goes geometrically from the quantizer's (training) value to this,
# where it is all but the nearest centre.
FINAL_SIGMA = 1000.0
# Refinement keeps the activations of the whole image for the gradient: ~1.9 GB per megapixel
# (hi, 768x512 on CPU). Larger images are refused rather than run out of memory.
MAX_PIXELS = 4_000_000


class ImageTooLargeError(ValueError):
    """An image with more pixels than refinement takes (MAX_PIXELS)."""


class Objective(NamedTuple):
    """J of hard symbols and its parts."""
    total: float
    distortion: float
    bits_per_symbol: float


class Refined(NamedTuple):
    symbols: Tensor  # (C, h, w): the refined ones, or the plain ones if those had a lower J
    plain: Objective  # J of the plain encoding (the encoder's own symbols)
    refined: Objective  # J of `symbols`


def distortion(x_hat: Tensor, x: Tensor, ae_cfg: Config) -> Tensor:
    """The model's distortion term (imgcomp.train.losses.compute_loss in training mode: float
    pixels) of one reconstruction: K_ms_ssim * (1 - MS-SSIM), K_psnr - PSNR or MSE, plus
    K_mse * MSE where the config adds it."""
    kind = ae_cfg.distortion_to_minimize
    mse = (x_hat - x).pow(2).mean()
    if kind == "ms_ssim":
        value = ae_cfg.K_ms_ssim * (1 - ms_ssim(x_hat, x, definition=ae_cfg.train_ms_ssim))
    elif kind == "psnr":
        value = ae_cfg.K_psnr - psnr_from_mse(mse)
    else:
        value = mse
    if kind != "mse" and ae_cfg.get("K_mse", 0):
        value = value + ae_cfg.K_mse * mse
    return value


class _Terms:
    """The distortion and the rate of a latent z, hard (the file's) or relaxed."""

    def __init__(self, model: ImageCodec, x: Tensor, ae_cfg: Config) -> None:
        self.model, self.x, self.ae_cfg = model, x, ae_cfg

    def _distortion(self, q: Tensor) -> Tensor:
        x_hat = self.model.autoencoder.decode(q.contiguous(memory_format=torch.channels_last))
        return distortion(x_hat[..., :self.x.shape[-2], :self.x.shape[-1]], self.x, self.ae_cfg)

    def hard(self, z: Tensor) -> tuple[Objective, Tensor]:
        """The distortion and bits per symbol (objective total 0) of z's nearest centres, and
        those (C, h, w) symbols."""
        quantizer = self.model.quantizer
        symbols = quantizer.symbols(z)
        q = quantizer.dequantize(symbols)
        bits = self.model.bitcost(q, symbols).double().mean()
        return Objective(0.0, float(self._distortion(q)), float(bits)), symbols[0]

    def relaxed(self, z: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
        """(distortion, bits per symbol) of the soft assignment at `sigma`: the decoder and
        the context model see the soft values, and the rate is the cross-entropy expected
        under the assignment."""
        model = self.model
        weights = model.quantizer.soft_assignment(z, sigma)
        q = (weights * model.quantizer.centers).sum(-1)
        log_p = F.log_softmax(model.probclass(q, model.pad_value()), dim=1)
        bits = -(weights.movedim(-1, 1) * log_p).sum(1).mean() / math.log(2.0)
        return self._distortion(q), bits


def _with_total(terms: Objective, beta: float, target: float) -> Objective:
    return terms._replace(total=terms.distortion
                          + beta * max(terms.bits_per_symbol - target, 0.0))


def refine(model: ImageCodec, image: np.ndarray, ae_cfg: Config, steps: int,
           progress: bool = False) -> Refined:
    """Refine the latent of an H x W x 3 uint8 image for `steps` Adam steps (see the module's
    docstring); `ae_cfg` is the model's ae config (distortion, beta)."""
    if model.training:
        raise RuntimeError("refinement needs eval mode (call .eval())")
    if steps < 0:
        raise ValueError(f"refinement steps must be >= 0, got {steps}")
    h, w = image.shape[:2]
    if steps and h * w > MAX_PIXELS:
        raise ImageTooLargeError(f"refinement holds the whole image in memory (~2 GB per "
                                 f"megapixel): {w}x{h} is over its limit of "
                                 f"{MAX_PIXELS / 1e6:g} megapixels; encode it without refinement")
    x = torch.from_numpy(np.array(image)).to(model.device).permute(2, 0, 1).unsqueeze(0).float()
    with torch.no_grad():  # as ImageCodec.symbols encodes
        z, _ = model.autoencoder.encode(
            pad_to_multiple(x).contiguous(memory_format=torch.channels_last))
        terms = _Terms(model, x, ae_cfg)
        plain, plain_symbols = terms.hard(z)
    target = plain.bits_per_symbol
    plain = _with_total(plain, ae_cfg.beta, target)
    if steps == 0:
        return Refined(plain_symbols, plain, plain)
    z.requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=min(MAX_STEP_SIZE, STEP_SIZE_TIMES_STEPS / steps))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    sigma_start = model.quantizer.sigma
    for step in tqdm(range(steps), desc="refining", unit="step", disable=not progress,
                     leave=False):
        sigma = sigma_start * (FINAL_SIGMA / sigma_start) ** (step / max(steps - 1, 1))
        dist, bits = terms.relaxed(z, sigma)
        total = dist + ae_cfg.beta * torch.clamp(bits - target, min=0)
        # Only the latent's gradient: autograd.grad computes none of the weights'.
        (z.grad,) = torch.autograd.grad(total, [z])
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        refined, symbols = terms.hard(z)
    refined = _with_total(refined, ae_cfg.beta, target)
    if refined.total < plain.total:
        return Refined(symbols.cpu(), plain, refined)
    return Refined(plain_symbols.cpu(), plain, plain)


def refined_symbols(model: ImageCodec, image: np.ndarray, ae_cfg: Config, steps: int,
                    progress: bool = False) -> Tensor:
    """The (C, h, w) symbols to code an image with: `refine`'s after `steps` steps, or with 0
    steps the plain ones of ImageCodec.symbols."""
    if steps == 0:
        return model.symbols(image)
    return refine(model, image, ae_cfg, steps, progress=progress).symbols
