"""The 'CVPR' autoencoder of Mentzer et al. 2018, with its importance map ("heatmap").

Encoder:  x (N,3,H,W) in [0,255] -> bottleneck (N,C[+1],H/8,W/8)
Decoder:  quantized bottleneck (N,C,H/8,W/8) -> x_hat (N,3,H,W) in [0,255]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imgcomp.nets import row_bands
from imgcomp.nets.shapes import SUBSAMPLING
from imgcomp.nets.weight_init import init_weights

# Per-channel statistics of ImageNet used by the original's FIXED normalization.
_FIXED_MEAN = (121.85369873, 113.58860779, 100.63715363)
_FIXED_VAR = (4746.37695312, 4454.13964844, 4812.234375)


def pad_to_multiple(x: torch.Tensor, multiple: int = SUBSAMPLING) -> torch.Tensor:
    """Pad N x C x H x W on the bottom/right by edge replication to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def _bn(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum, eps=eps)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one dimension: the output has
    ceil(size / stride) positions and the odd pixel of padding goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2d(nn.Conv2d):
    """nn.Conv2d with zero padding and `input_span`: the rows (or columns) that outputs
    read, for tiling."""

    def pad_before(self, size: int, dim: int) -> int:
        """Padding before the input along dim (0: rows, 1: columns) for an input of `size`."""
        return self.padding[dim]

    def input_span(self, start: int, stop: int, dim: int) -> tuple[int, int]:
        """[first, last) input positions along dim (padding positions included) that outputs
        [start, stop) read, for inputs whose size is a multiple of the stride."""
        k, s = self.kernel_size[dim], self.stride[dim]
        before = self.pad_before(s, dim)
        return start * s - before, (stop - 1) * s - before + k


class Conv2dSame(Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding (asymmetric for stride 2: 5x5 pads 1 before,
    2 after), so that weights trained by the original compute the same function."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 bias: bool) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, bias=bias)

    def pad_before(self, size: int, dim: int) -> int:
        return _same_pads(size, self.kernel_size[dim], self.stride[dim])[0]

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = _same_pads(x.shape[-2], kh, sh)
        left, right = _same_pads(x.shape[-1], kw, sw)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias,
                        self.stride)


class ConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with zero padding, computed by row_bands; `input_span` as
    Conv2d's. Output position o is position o + padding of the full transposed convolution,
    to which input position i contributes i * stride .. i * stride + kernel - 1."""

    def output_rows(self, input_rows: int) -> int:
        (k, _), (s, _), (p, _) = self.kernel_size, self.stride, self.padding
        return (input_rows - 1) * s - 2 * p + k + self.output_padding[0]

    def input_span(self, start: int, stop: int, dim: int) -> tuple[int, int]:
        k, s, p = self.kernel_size[dim], self.stride[dim], self.padding[dim]
        return -(-(start + p - k + 1) // s), (stop - 1 + p) // s + 1

    def forward(self, x: Tensor) -> Tensor:
        return row_bands.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding,
                                          self.output_padding, self.output_rows(x.shape[-2]))


class ConvTranspose2dSame(ConvTranspose2d):
    """ConvTranspose2d with TensorFlow's conv2d_transpose 'SAME' semantics: the output is
    stride x the input, taken from the full transposed convolution starting at the padding
    that the matching forward 'SAME' convolution puts before the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 bias: bool) -> None:
        before = max(kernel_size - stride, 0) // 2
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=before,
                         bias=bias)

    def output_rows(self, input_rows: int) -> int:
        return input_rows * self.stride[0]

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[..., :x.shape[-1] * self.stride[1]]


def _conv(cin: int, cout: int, kernel: int, stride: int, bias: bool, tf_same: bool
          ) -> Conv2d:
    if tf_same:
        return Conv2dSame(cin, cout, kernel, stride, bias=bias)
    return Conv2d(cin, cout, kernel, stride, kernel // 2, bias=bias)


def _conv_transpose(cin: int, cout: int, kernel: int, bias: bool, tf_same: bool
                    ) -> ConvTranspose2d:
    """Stride-2 transposed conv doubling the size."""
    if tf_same:
        return ConvTranspose2dSame(cin, cout, kernel, 2, bias=bias)
    return ConvTranspose2d(cin, cout, kernel, 2, kernel // 2, output_padding=1, bias=bias)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with BN, ReLU after the first only (if `activation`), plus identity."""

    def __init__(self, n: int, activation: bool, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = Conv2d(n, n, 3, padding=1, bias=False)
        self.bn1 = _bn(n, bn_momentum, bn_eps)
        self.conv2 = Conv2d(n, n, 3, padding=1, bias=False)
        self.bn2 = _bn(n, bn_momentum, bn_eps)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        # In place where nothing keeps the tensor for backward (BatchNorm keeps its input, not
        # its output): the same numbers with fewer 25 MB allocations per training step.
        y = self.bn1(self.conv1(x))
        if self.activation:
            y = y.relu_()
        return self.bn2(self.conv2(y)).add_(x)


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
            y = group(y).add_(y)  # a block's output is used only here
        return self.final(y).add_(x)


def _conv_bn_relu(conv: nn.Module, n: int, momentum: float, eps: float) -> nn.Sequential:
    return nn.Sequential(conv, _bn(n, momentum, eps), nn.ReLU(inplace=True))


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
    """h1, h2 (5x5 stride 2, BN, ReLU), the residual trunk, and to_bn (5x5 stride 2 to the
    bottleneck; `out_bn`: BatchNorm and no bias, as the original's slim scope applies its
    normalizer even without activation)."""

    def __init__(self, n: int, num_groups: int, out_channels: int, bn_momentum: float,
                 bn_eps: float, tf_same: bool = False, out_bn: bool = False) -> None:
        super().__init__()
        self.head = nn.Sequential(
            _conv_bn_relu(_conv(3, n // 2, 5, 2, False, tf_same), n // 2, bn_momentum, bn_eps),
            _conv_bn_relu(_conv(n // 2, n, 5, 2, False, tf_same), n, bn_momentum, bn_eps),
        )
        self.trunk = ResidualTrunk(n, num_groups, bn_momentum, bn_eps)
        self.out = _conv(n, out_channels, 5, 2, not out_bn, tf_same)
        self.out_bn = _bn(out_channels, bn_momentum, bn_eps) if out_bn else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.out_bn(self.out(self.trunk(self.head(x))))


class Decoder(nn.Module):
    """from_bn (3x3 transposed, stride 2), the residual trunk, h12 and h13 (5x5 transposed,
    stride 2; h13 with BatchNorm and no bias when `out_bn`, as the original)."""

    def __init__(self, n: int, num_groups: int, in_channels: int, bn_momentum: float,
                 bn_eps: float, tf_same: bool = False, out_bn: bool = False) -> None:
        super().__init__()
        self.head = _conv_bn_relu(_conv_transpose(in_channels, n, 3, False, tf_same),
                                  n, bn_momentum, bn_eps)
        self.trunk = ResidualTrunk(n, num_groups, bn_momentum, bn_eps)
        tail = [_conv_bn_relu(_conv_transpose(n, n // 2, 5, False, tf_same),
                              n // 2, bn_momentum, bn_eps),
                _conv_transpose(n // 2, 3, 5, not out_bn, tf_same)]
        if out_bn:
            tail.append(_bn(3, bn_momentum, bn_eps))
        self.tail = nn.Sequential(*tail)

    def forward(self, q: Tensor) -> Tensor:
        return self.tail(self.trunk(self.head(q)))


class Autoencoder(nn.Module):
    """Encoder/decoder pair with normalization, importance map and output clipping.

    `encode` returns the (masked) bottleneck z and the importance mask (None without heatmap);
    quantization happens outside (see quantizer.py), between `encode` and `decode`.
    """

    def __init__(self, num_channels: int, n: int = 128, num_groups: int = 5,
                 heatmap: bool = True, normalization: str = "FIXED",
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5, tf_same_padding: bool = True,
                 bottleneck_output_bn: bool = True, weight_init: str = "xavier") -> None:
        super().__init__()
        self.num_channels = num_channels
        self.heatmap = heatmap
        self.normalizer = Normalizer(normalization)
        out_channels = num_channels + 1 if heatmap else num_channels
        self.encoder = Encoder(n, num_groups, out_channels, bn_momentum, bn_eps,
                               tf_same_padding, bottleneck_output_bn)
        self.decoder = Decoder(n, num_groups, num_channels, bn_momentum, bn_eps,
                               tf_same_padding, bottleneck_output_bn)
        init_weights(self, weight_init)

    @classmethod
    def from_config(cls, cfg) -> Autoencoder:
        if cfg.arch != "CVPR":
            raise ValueError(f"{cfg.source_path}: only arch = 'CVPR' is implemented, "
                             f"got {cfg.arch!r}")
        return cls(cfg.num_chan_bn, n=cfg.arch_param_n, num_groups=cfg.arch_param_B,
                   heatmap=cfg.heatmap, normalization=cfg.normalization,
                   bn_momentum=cfg.bn_momentum, bn_eps=cfg.bn_eps,
                   tf_same_padding=cfg.tf_same_padding,
                   bottleneck_output_bn=cfg.bottleneck_output_bn, weight_init=cfg.weight_init)

    def bottleneck(self, x: Tensor) -> Tensor:
        """The encoder's output (N, C[+1], H/8, W/8) before masking; channel 0 is the
        importance map's logit when heatmap is on."""
        if x.shape[-2] % SUBSAMPLING or x.shape[-1] % SUBSAMPLING:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of "
                             f"{SUBSAMPLING}; pad it first")
        return self.encoder(self.normalizer.normalize(x))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        y = self.bottleneck(x)
        if not self.heatmap:
            return y, None
        mask = importance_mask(y[:, :1], self.num_channels)
        return y[:, 1:] * mask, mask

    def decode(self, q: Tensor) -> Tensor:
        return torch.clamp(self.normalizer.denormalize(self.decoder(q)), 0.0, 255.0)
