"""Learned-centre scalar quantizer with soft/hard assignment and a straight-through gradient."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class Quantized(NamedTuple):
    qbar: Tensor  # forward value = qhard, gradient of qsoft
    qsoft: Tensor
    qhard: Tensor
    symbols: Tensor  # int64 indices into the centres


class Quantizer(nn.Module):
    """L learned centres, initialised uniformly in `initial_range`.

    Soft assignment softmax(-sigma * (z - c_j)^2) gives a differentiable qsoft; the forward
    pass uses the nearest centre (qhard); qbar = qsoft + stop_gradient(qhard - qsoft).
    """

    def __init__(self, num_centers: int, initial_range: tuple[float, float] = (-2.0, 2.0),
                 sigma: float = 1.0) -> None:
        super().__init__()
        low, high = initial_range
        self.centers = nn.Parameter(torch.empty(num_centers).uniform_(low, high))
        self.sigma = sigma

    @classmethod
    def from_config(cls, cfg) -> Quantizer:
        return cls(cfg.num_centers, tuple(cfg.centers_initial_range), cfg.quantizer_sigma)

    @property
    def num_centers(self) -> int:
        return self.centers.numel()

    def symbols(self, z: Tensor) -> Tensor:
        """Index of the nearest centre for each element of z."""
        return torch.argmin((z.unsqueeze(-1) - self.centers).abs(), dim=-1)

    def dequantize(self, symbols: Tensor) -> Tensor:
        return self.centers[symbols]

    def soft_assignment(self, z: Tensor, sigma: float | None = None) -> Tensor:
        """(..., L) weights softmax(-sigma * (z - c_j)^2) of each element of z over the
        centres (sigma: the quantizer's own unless given)."""
        sigma = self.sigma if sigma is None else sigma
        return torch.softmax(-sigma * (z.unsqueeze(-1) - self.centers) ** 2, dim=-1)

    def forward(self, z: Tensor) -> Quantized:
        # As soft_assignment, with the squared distances computed once for both uses.
        sq_dist = (z.unsqueeze(-1) - self.centers) ** 2
        weights = torch.softmax(-self.sigma * sq_dist, dim=-1)
        qsoft = (weights * self.centers).sum(-1)
        symbols = torch.argmin(sq_dist, dim=-1)
        qhard = self.centers[symbols]
        qbar = qsoft + (qhard - qsoft).detach()
        return Quantized(qbar, qsoft, qhard, symbols)
