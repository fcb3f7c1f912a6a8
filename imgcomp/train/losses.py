"""The training loss of the original: distortion + beta * max(H_soft - H_target, 0) + L2
regularizers, minimized by both optimizers (autoencoder + centres, probability classifier)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from imgcomp.codec.image_codec import CodecOutput, ImageCodec
from imgcomp.evaluation.quality import ms_ssim, psnr_from_mse


class LossTerms(NamedTuple):
    total: Tensor  # minimized by both optimizers
    distortion: Tensor  # scaled distortion (the original's d_loss_scaled)
    rate_loss: Tensor  # beta * max(H_soft - H_target, 0) (the original's pc_loss)
    reg_enc_dec: Tensor  # L2 of the autoencoder's conv weights and the centres
    ms_ssim: Tensor
    mse: Tensor
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


def mse_per_image(x_hat: Tensor, x: Tensor, truncate: bool) -> Tensor:
    """(N,) mean squared errors; with `truncate`, of the pixel values cast to integers as
    the original does for every measure it does not minimize (real images are integers)."""
    if truncate:
        x_hat, x = torch.trunc(x_hat), torch.trunc(x)
    return (x_hat - x).pow(2).flatten(1).mean(dim=1)


def compute_loss(model: ImageCodec, out: CodecOutput, x: Tensor, ae_cfg, pc_cfg) -> LossTerms:
    kind = ae_cfg.distortion_to_minimize
    evaluating = not model.training
    msssim = ms_ssim(out.x_hat, x, definition=ae_cfg.train_ms_ssim)
    mse_float = mse_per_image(out.x_hat, x, truncate=False)
    mse_int = mse_per_image(out.x_hat, x, truncate=True)
    mse_logged = (mse_int if evaluating or kind != "mse" else mse_float).mean()
    # PSNR as the original: the batch mean of each image's PSNR.
    psnr_images = psnr_from_mse(mse_int if evaluating or kind != "psnr" else mse_float)
    if kind == "ms_ssim":
        distortion = ae_cfg.K_ms_ssim * (1 - msssim)
    elif kind == "psnr":
        distortion = ae_cfg.K_psnr - psnr_images.mean()
    else:
        distortion = mse_float.mean()
    # A port-only term; flattened configs of runs older than K_mse lack the entry.
    if kind != "mse" and ae_cfg.get("K_mse", 0):
        distortion = distortion + ae_cfg.K_mse * mse_float.mean()

    # The probclass input and its padding are constants (model.py), so the rate reaches the
    # autoencoder through the importance mask only. With the original's objective the
    # probclass is trained by the rate term too; with 'H_real' its bit costs are detached
    # there and it is trained on its cross-entropy instead.
    trained_on_total = pc_cfg.objective == "total_loss"
    bitcost = out.bitcost if trained_on_total else out.bitcost.detach()
    H_real = bitcost.mean()
    H_mask = (bitcost * out.mask).mean() if out.mask is not None else H_real
    H_soft = 0.5 * (H_real + H_mask)
    rate_loss = torch.zeros((), device=x.device)
    if ae_cfg.H_target is not None:
        rate_loss = ae_cfg.beta * torch.clamp(H_soft - ae_cfg.H_target, min=0)
    reg_enc_dec = torch.zeros((), device=x.device)
    if ae_cfg.regularization_factor:
        reg_enc_dec = ae_cfg.regularization_factor * l2_weights(model.autoencoder)
    if ae_cfg.regularization_factor_centers:
        reg_enc_dec = reg_enc_dec + (ae_cfg.regularization_factor_centers * 0.5
                                     * model.quantizer.centers.pow(2).sum())
    total = distortion + rate_loss + reg_enc_dec
    if pc_cfg.regularization_factor:
        total = total + pc_cfg.regularization_factor * l2_weights(model.probclass)
    if not trained_on_total:
        total = total + out.bitcost.mean()
    return LossTerms(total, distortion, rate_loss, reg_enc_dec, msssim.detach(),
                     mse_logged.detach(), psnr_images.mean().detach(),
                     bits_per_pixel(bitcost.detach(), x.shape), H_real.detach(),
                     H_mask.detach(), H_soft.detach())
