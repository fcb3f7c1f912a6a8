"""The 'CVPR' autoencoder of Mentzer et al. 2018, with its importance map ("heatmap").

Encoder:  x (N,3,H,W) in [0,255] -> bottleneck (N,C[+1],H/8,W/8)
Decoder:  quantized bottleneck (N,C,H/8,W/8) -> x_hat (N,3,H,W) in [0,255]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-channel statistics of ImageNet used by the original's FIXED normalization.
_FIXED_MEAN = (121.85369873, 113.58860779, 100.63715363)
_FIXED_VAR = (4746.37695312, 4454.13964844, 4812.234375)

SUBSAMPLING = 8


def pad_to_multiple(x: torch.Tensor, multiple: int = SUBSAMPLING) -> torch.Tensor:
    """Pad N x C x H x W on the bottom/right by edge replication to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def _bn(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum, eps=eps)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with BN, ReLU after the first only (if `activation`), plus identity."""

    def __init__(self, n: int, activation: bool, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.bn1 = _bn(n, bn_momentum, bn_eps)
        self.conv2 = nn.Conv2d(n, n, 3, padding=1, bias=False)
        self.bn2 = _bn(n, bn_momentum, bn_eps)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn1(self.conv1(x))
        if self.activation:
            y = torch.relu(y)
        return x + self.bn2(self.conv2(y))


class ResidualTrunk(nn.Module):
    """B groups of 3 residual blocks (each group with its own skip), a final residual block
    without activation, and a skip around everything."""

    def __init__(self, n: int, num_groups: int, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.groups = nn.ModuleList(
            nn.Sequential(*(ResidualBlock(n, True, bn_momentum, bn_eps) for _ in range(3)))
            for _ in range(num_groups)
        )
        self.final = ResidualBlock(n, False, bn_momentum, bn_eps)

    def forward(self, x: Tensor) -> Tensor:
        y = x
        for group in self.groups:
            y = y + group(y)
        return x + self.final(y)


def _conv_bn_relu(conv: nn.Module, n: int, momentum: float, eps: float) -> nn.Sequential:
    return nn.Sequential(conv, _bn(n, momentum, eps), nn.ReLU())


class Normalizer(nn.Module):
    """FIXED normalization (x - mean) / sqrt(var + 1e-10) with ImageNet statistics, or OFF."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("FIXED", "OFF"):
            raise ValueError(f"normalization must be FIXED or OFF, got {mode!r}")
        mean = torch.tensor(_FIXED_MEAN if mode == "FIXED" else (0.0, 0.0, 0.0))
        std = torch.sqrt(torch.tensor(_FIXED_VAR) + 1e-10) if mode == "FIXED" else torch.ones(3)
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


def importance_mask(heatmap_logits: Tensor, num_channels: int) -> Tensor:
    """mask[:, c] = clip(sigmoid(h) * C - c, 0, 1): channel c is used where the map exceeds c.

    heatmap_logits: (N, 1, h, w) -> mask (N, C, h, w).
    """
    h = torch.sigmoid(heatmap_logits) * num_channels
    c = torch.arange(num_channels, device=h.device, dtype=h.dtype).view(1, -1, 1, 1)
    return torch.clamp(h - c, 0.0, 1.0)


class Encoder(nn.Module):
    def __init__(self, n: int, num_groups: int, out_channels: int, bn_momentum: float,
                 bn_eps: float) -> None:
        super().__init__()
        self.head = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(3, n // 2, 5, 2, 2, bias=False), n // 2, bn_momentum, bn_eps),
            _conv_bn_relu(nn.Conv2d(n // 2, n, 5, 2, 2, bias=False), n, bn_momentum, bn_eps),
        )
        self.trunk = ResidualTrunk(n, num_groups, bn_momentum, bn_eps)
        self.out = nn.Conv2d(n, out_channels, 5, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.trunk(self.head(x)))


class Decoder(nn.Module):
    def __init__(self, n: int, num_groups: int, in_channels: int, bn_momentum: float,
                 bn_eps: float) -> None:
        super().__init__()
        self.head = _conv_bn_relu(
            nn.ConvTranspose2d(in_channels, n, 3, 2, 1, output_padding=1, bias=False),
            n, bn_momentum, bn_eps)
        self.trunk = ResidualTrunk(n, num_groups, bn_momentum, bn_eps)
        self.tail = nn.Sequential(
            _conv_bn_relu(nn.ConvTranspose2d(n, n // 2, 5, 2, 2, output_padding=1, bias=False),
                          n // 2, bn_momentum, bn_eps),
            nn.ConvTranspose2d(n // 2, 3, 5, 2, 2, output_padding=1),
        )

    def forward(self, q: Tensor) -> Tensor:
        return self.tail(self.trunk(self.head(q)))


class Autoencoder(nn.Module):
    """Encoder/decoder pair with normalization, importance map and output clipping.

    `encode` returns the (masked) bottleneck z and the importance mask (None without heatmap);
    quantization happens outside (see quantizer.py), between `encode` and `decode`.
    """

    def __init__(self, num_channels: int, n: int = 128, num_groups: int = 5,
                 heatmap: bool = True, normalization: str = "FIXED",
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.heatmap = heatmap
        self.normalizer = Normalizer(normalization)
        out_channels = num_channels + 1 if heatmap else num_channels
        self.encoder = Encoder(n, num_groups, out_channels, bn_momentum, bn_eps)
        self.decoder = Decoder(n, num_groups, num_channels, bn_momentum, bn_eps)

    @classmethod
    def from_config(cls, cfg) -> Autoencoder:
        if cfg.arch != "CVPR":
            raise ValueError(f"{cfg.source_path}: only arch = 'CVPR' is implemented, "
                             f"got {cfg.arch!r}")
        return cls(cfg.num_chan_bn, n=cfg.arch_param_n, num_groups=cfg.arch_param_B,
                   heatmap=cfg.heatmap, normalization=cfg.normalization,
                   bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.shape[-2] % SUBSAMPLING or x.shape[-1] % SUBSAMPLING:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of "
                             f"{SUBSAMPLING}; pad it first")
        y = self.encoder(self.normalizer.normalize(x))
        if not self.heatmap:
            return y, None
        mask = importance_mask(y[:, :1], self.num_channels)
        return y[:, 1:] * mask, mask

    def decode(self, q: Tensor) -> Tensor:
        return torch.clamp(self.normalizer.denormalize(self.decoder(q)), 0.0, 255.0)
