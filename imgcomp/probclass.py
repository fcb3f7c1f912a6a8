"""The 'res_shallow' probability classifier: a 3D masked CNN over the C x H x W symbol volume.

The volume is treated as a one-channel 3D image whose depth is the bottleneck channel. Coding
order is channel-major (c, then h, then w). Filters are (K//2+1) x K x K and VALID, so the
volume is padded in front (depth) and on all four spatial sides; the masks only act on the
last depth slice (the current channel), earlier slices are fully visible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcomp.init import init_weights


def causal_mask(kernel_size: int, include_centre: bool) -> Tensor:
    """(D, K, K) mask, D = K//2+1: earlier depth slices all ones; in the last slice, rows above
    the centre and the centre row left of the centre (and the centre itself if asked)."""
    depth, centre = kernel_size // 2 + 1, kernel_size // 2
    mask = torch.ones(depth, kernel_size, kernel_size)
    mask[-1, centre + 1:, :] = 0
    mask[-1, centre, centre + (1 if include_centre else 0):] = 0
    return mask


class MaskedConv3d(nn.Conv3d):
    """VALID 3D convolution whose kernel is multiplied by a fixed causal mask."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 include_centre: bool) -> None:
        depth = kernel_size // 2 + 1
        super().__init__(in_channels, out_channels, (depth, kernel_size, kernel_size))
        self.register_buffer("mask", causal_mask(kernel_size, include_centre), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv3d(x, self.weight * self.mask, self.bias)


class ProbClassifier(nn.Module):
    """conv(first mask) + ReLU, one residual block of two convs (other mask, ReLU after the
    first), conv to L logits (other mask), followed by a ReLU when `logits_relu` (the
    original's conv3d helper defaults to ReLU and its last call keeps it: logits >= 0).
    Context 5 x 9 x 9 for K = 3."""

    num_layers = 4

    def __init__(self, num_centers: int, kernel_size: int = 3, k: int = 24,
                 logits_relu: bool = True, weight_init: str = "xavier") -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.logits_relu = logits_relu
        self.conv_in = MaskedConv3d(1, k, kernel_size, include_centre=False)
        self.res_conv1 = MaskedConv3d(k, k, kernel_size, include_centre=True)
        self.res_conv2 = MaskedConv3d(k, k, kernel_size, include_centre=True)
        self.conv_out = MaskedConv3d(k, num_centers, kernel_size, include_centre=True)
        init_weights(self, weight_init)

    @classmethod
    def from_config(cls, pc_cfg, num_centers: int) -> ProbClassifier:
        if pc_cfg.arch != "res_shallow":
            raise ValueError(f"{pc_cfg.source_path}: only arch = 'res_shallow' is implemented, "
                             f"got {pc_cfg.arch!r}")
        return cls(num_centers, pc_cfg.kernel_size, pc_cfg.arch_param__k,
                   logits_relu=pc_cfg.logits_relu, weight_init=pc_cfg.weight_init)

    @property
    def context_pad(self) -> int:
        """Padding per side (spatial) and in front (depth): (context_size - 1) // 2."""
        return self.num_layers * (self.kernel_size // 2)

    @property
    def context_size(self) -> int:
        return 2 * self.context_pad + 1

    def pad(self, q: Tensor, pad_value: float) -> Tensor:
        """(N, C, H, W) -> (N, 1, C + P, H + 2P, W + 2P), padded with pad_value."""
        p = self.context_pad
        return F.pad(q.unsqueeze(1), (p, p, p, p, p, 0), value=pad_value)

    def logits_valid(self, volume: Tensor) -> Tensor:
        """Logits for an already padded volume (N, 1, D, H, W) -> (N, L, D-P, H-2P, W-2P)."""
        half = self.kernel_size // 2
        x = torch.relu(self.conv_in(volume))
        skip = x[:, :, 2 * half:, 2 * half:x.shape[3] - 2 * half, 2 * half:x.shape[4] - 2 * half]
        x = skip + self.res_conv2(torch.relu(self.res_conv1(x)))
        logits = self.conv_out(x)
        return torch.relu(logits) if self.logits_relu else logits

    def forward(self, q: Tensor, pad_value: float) -> Tensor:
        """Logits (N, L, C, H, W) for the symbol values q (N, C, H, W)."""
        return self.logits_valid(self.pad(q, pad_value))

    @staticmethod
    def bitcost(logits: Tensor, symbols: Tensor) -> Tensor:
        """Cross-entropy in bits of each symbol, (N, C, H, W)."""
        return F.cross_entropy(logits, symbols, reduction="none") / math.log(2.0)
