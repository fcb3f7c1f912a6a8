"""The 'res_shallow' probability classifier: a 3D masked CNN over the C x H x W symbol volume.

The volume is treated as a one-channel 3D image whose depth is the bottleneck channel. Coding
order is channel-major (c, then h, then w). Filters are (K//2+1) x K x K and VALID, so the
volume is padded in front (depth) and on all four spatial sides; the masks only act on the
last depth slice (the current channel), earlier slices are fully visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcomp.nets.weight_init import init_weights


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
        self.include_centre = include_centre
        self.register_buffer("mask", causal_mask(kernel_size, include_centre), persistent=False)

    @property
    def reach(self) -> int:
        """Positions the kernel reaches on each spatial side and in front (depth): K//2."""
        return self.kernel_size[-1] // 2

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.mask
        if x.device.type == "cpu":
            # A channels-last kernel makes oneDNN compute in channels-last (NDHWC), ~1.8x
            # faster forward and backward; the output, and so the next layer's input, follows.
            # (Not measured on CUDA, which keeps the default layout.)
            weight = weight.contiguous(memory_format=torch.channels_last_3d)
        return F.conv3d(x, weight, self.bias)


@dataclass(frozen=True)
class ContextLayer:
    """One layer of the context model: conv, plus the output of the earlier layer `skip_from`
    (cropped to this layer's extent) if any, then a ReLU if `relu`."""

    name: str  # the conv's attribute name, hence its state-dict prefix
    conv: MaskedConv3d
    relu: bool
    skip_from: int | None = None  # index into ProbClassifier.layers


def _aligned(x: Tensor, like: Tensor) -> Tensor:
    """Crop an earlier layer's output to `like`'s positions: VALID causal convs shrink the
    volume in front (depth) and symmetrically on the spatial sides."""
    d, h, w = (a - b for a, b in zip(x.shape[2:], like.shape[2:], strict=True))
    return x[:, :, d:, h // 2:x.shape[3] - h // 2, w // 2:x.shape[4] - w // 2]


class ProbClassifier(nn.Module):
    """conv(first mask) + ReLU, `num_res_blocks` residual blocks of two convs (other mask, ReLU
    after the first, the block's input added after the second), conv to L logits (other
    mask), followed by a ReLU when `logits_relu` (the original's conv3d helper defaults to
    ReLU and its last call keeps it: logits >= 0). One block ('res_shallow', the paper's):
    context 5 x 9 x 9 for K = 3.

    `layers` describes the network; the float forward and the integer coder
    (imgcomp.entropy_coding.integer_model) both run from it.
    """

    def __init__(self, num_centers: int, kernel_size: int = 3, k: int = 24,
                 logits_relu: bool = True, weight_init: str = "xavier",
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {num_res_blocks}")
        layers = [ContextLayer("conv_in", MaskedConv3d(1, k, kernel_size, False), relu=True)]
        for block in range(1, num_res_blocks + 1):
            # The first block's names are the original's (checkpoints, convert.py).
            prefix = "res" if block == 1 else f"res{block}"
            block_input = len(layers) - 1
            layers.append(ContextLayer(f"{prefix}_conv1", MaskedConv3d(k, k, kernel_size, True),
                                       relu=True))
            layers.append(ContextLayer(f"{prefix}_conv2", MaskedConv3d(k, k, kernel_size, True),
                                       relu=False, skip_from=block_input))
        layers.append(ContextLayer("conv_out", MaskedConv3d(k, num_centers, kernel_size, True),
                                   relu=logits_relu))
        for layer in layers:
            self.add_module(layer.name, layer.conv)
        self.layers = tuple(layers)
        init_weights(self, weight_init)

    @classmethod
    def from_config(cls, pc_cfg, num_centers: int) -> ProbClassifier:
        if pc_cfg.arch != "res_shallow":
            raise ValueError(f"{pc_cfg.source_path}: only arch = 'res_shallow' is implemented, "
                             f"got {pc_cfg.arch!r}")
        return cls(num_centers, pc_cfg.kernel_size, pc_cfg.arch_param__k,
                   logits_relu=pc_cfg.logits_relu, weight_init=pc_cfg.weight_init,
                   num_res_blocks=pc_cfg.arch_param__num_res_blocks)

    @property
    def context_pad(self) -> int:
        """Padding per side (spatial) and in front (depth): (context_size - 1) // 2."""
        return sum(layer.conv.reach for layer in self.layers)

    @property
    def context_size(self) -> int:
        return 2 * self.context_pad + 1

    def pad(self, q: Tensor, pad_value: float) -> Tensor:
        """(N, C, H, W) -> (N, 1, C + P, H + 2P, W + 2P), padded with pad_value."""
        p = self.context_pad
        return F.pad(q.unsqueeze(1), (p, p, p, p, p, 0), value=pad_value)

    def logits_valid(self, volume: Tensor) -> Tensor:
        """Logits for an already padded volume (N, 1, D, H, W) -> (N, L, D-P, H-2P, W-2P)."""
        skip_sources = {layer.skip_from for layer in self.layers} - {None}
        outputs = {}
        x = volume
        for i, layer in enumerate(self.layers):
            x = layer.conv(x)
            if layer.skip_from is not None:
                x = x + _aligned(outputs[layer.skip_from], x)
            if layer.relu:
                x = torch.relu(x)
            if i in skip_sources:
                outputs[i] = x
        return x

    def forward(self, q: Tensor, pad_value: float) -> Tensor:
        """Logits (N, L, C, H, W) for the symbol values q (N, C, H, W)."""
        return self.logits_valid(self.pad(q, pad_value))

    @staticmethod
    def bitcost(logits: Tensor, symbols: Tensor) -> Tensor:
        """Cross-entropy in bits of each symbol, (N, C, H, W)."""
        return F.cross_entropy(logits, symbols, reduction="none") / math.log(2.0)
