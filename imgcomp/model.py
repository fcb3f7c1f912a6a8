"""The whole codec: autoencoder + quantizer + probability classifier, built from the configs."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from imgcomp.autoencoder import Autoencoder
from imgcomp.probclass import ProbClassifier
from imgcomp.quantizer import Quantizer


class CodecOutput(NamedTuple):
    x_hat: Tensor  # (N, 3, H, W) reconstruction in [0, 255]
    symbols: Tensor  # (N, C, h, w) centre indices
    bitcost: Tensor  # (N, C, h, w) bits per symbol under the probability classifier
    mask: Tensor | None  # (N, C, h, w) importance mask, None without heatmap


class ImageCodec(nn.Module):
    """forward(x) runs the training/eval graph: encode, quantize, decode, and bit costs.

    Training decodes qbar (hard forward, soft gradient); eval mode decodes qhard. The
    probability classifier sees the quantized volume with gradients stopped, as the original,
    and its padding, the first centre, is a constant (the original's tf.pad passes no gradient
    to its pad value either).
    """

    def __init__(self, autoencoder: Autoencoder, quantizer: Quantizer,
                 probclass: ProbClassifier, use_centers_for_padding: bool = True,
                 output_uint8: str = "truncate") -> None:
        super().__init__()
        if output_uint8 not in ("truncate", "round"):
            raise ValueError(f"output_uint8 must be truncate or round, got {output_uint8!r}")
        self.autoencoder = autoencoder
        self.quantizer = quantizer
        self.probclass = probclass
        self.use_centers_for_padding = use_centers_for_padding
        self.output_uint8 = output_uint8

    @classmethod
    def from_configs(cls, ae_cfg, pc_cfg) -> ImageCodec:
        quantizer = Quantizer.from_config(ae_cfg)
        return cls(Autoencoder.from_config(ae_cfg), quantizer,
                   ProbClassifier.from_config(pc_cfg, quantizer.num_centers),
                   pc_cfg.use_centers_for_padding, ae_cfg.output_uint8)

    def to_uint8(self, x_hat: Tensor) -> Tensor:
        """A reconstruction in [0, 255] as uint8: truncated as the original's val.py casts
        it, or rounded to the nearest level."""
        if self.output_uint8 == "round":
            x_hat = x_hat.round()
        return x_hat.clamp(0, 255).to(torch.uint8)

    def pad_value(self) -> float:
        """Value of the padding around the symbol volume: centres[0] (or 0)."""
        return float(self.quantizer.centers[0].detach()) if self.use_centers_for_padding else 0.0

    def forward(self, x: Tensor) -> CodecOutput:
        z, mask = self.autoencoder.encode(x)
        q = self.quantizer(z)
        x_hat = self.autoencoder.decode(q.qbar if self.training else q.qhard)
        logits = self.probclass(q.qhard.detach(), self.pad_value())
        return CodecOutput(x_hat, q.symbols, ProbClassifier.bitcost(logits, q.symbols), mask)
