"""The training loss: distortion + beta * max(H_soft - H_target, 0) + L2 regularizers."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from imgcomp.metrics import ms_ssim, mse, psnr_from_mse
from imgcomp.model import CodecOutput, ImageCodec


class LossTerms(NamedTuple):
    ae_loss: Tensor  # minimized by the autoencoder + centres optimizer
    pc_loss: Tensor  # minimized by the probability classifier optimizer (cross-entropy)
    distortion: Tensor  # scaled distortion term of ae_loss
    ms_ssim: Tensor
    psnr: Tensor
    bpp: Tensor
    H_real: Tensor  # mean bits per symbol
    H_mask: Tensor  # mean bits per symbol weighted by the importance mask
    H_soft: Tensor


def bits_per_pixel(bitcost: Tensor, image_shape: torch.Size) -> Tensor:
    """Total bits / number of pixels of the batch."""
    n, _, h, w = image_shape
    return bitcost.sum() / (n * h * w)


def l2_weights(module: nn.Module) -> Tensor:
    """sum(w^2)/2 over conv kernels (as TF's l2_regularizer on conv weights; no BN, no bias)."""
    total = torch.zeros(())
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d)):
            total = total.to(m.weight.device) + 0.5 * m.weight.pow(2).sum()
    return total


def compute_loss(model: ImageCodec, out: CodecOutput, x: Tensor, ae_cfg, pc_cfg) -> LossTerms:
    msssim = ms_ssim(out.x_hat, x)
    mse_value = mse(out.x_hat, x)
    psnr_value = psnr_from_mse(mse_value)
    kind = ae_cfg.distortion_to_minimize
    if kind == "ms_ssim":
        distortion = ae_cfg.K_ms_ssim * (1 - msssim)
    elif kind == "psnr":
        distortion = ae_cfg.K_psnr - psnr_value
    else:
        distortion = mse_value
    # Flattened configs of runs older than K_mse lack the entry.
    if kind != "mse" and ae_cfg.get("K_mse", 0):
        distortion = distortion + ae_cfg.K_mse * mse_value

    # The rate term reaches the autoencoder only through the importance mask (the probclass
    # input is stop-gradient), so the bit costs are detached here: the probclass itself is
    # trained on its cross-entropy H_real alone, as in the paper.
    bitcost = out.bitcost.detach()
    H_real = bitcost.mean()
    H_mask = (bitcost * out.mask).mean() if out.mask is not None else H_real
    H_soft = 0.5 * (H_real + H_mask)
    ae_loss = distortion
    if ae_cfg.H_target is not None:
        ae_loss = ae_loss + ae_cfg.beta * torch.clamp(H_soft - ae_cfg.H_target, min=0)
    if ae_cfg.regularization_factor:
        ae_loss = ae_loss + ae_cfg.regularization_factor * l2_weights(model.autoencoder)
    if ae_cfg.regularization_factor_centers:
        ae_loss = ae_loss + (ae_cfg.regularization_factor_centers * 0.5
                             * model.quantizer.centers.pow(2).sum())

    pc_loss = out.bitcost.mean()
    if pc_cfg.regularization_factor:
        pc_loss = pc_loss + pc_cfg.regularization_factor * l2_weights(model.probclass)
    return LossTerms(ae_loss, pc_loss, distortion, msssim.detach(), psnr_value.detach(),
                     bits_per_pixel(bitcost, x.shape), H_real, H_mask, H_soft)
