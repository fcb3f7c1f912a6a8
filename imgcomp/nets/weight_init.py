"""Weight initialization of the networks, as the original or as PyTorch does."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, scheme: str) -> None:
    """'xavier': Glorot-uniform conv weights and zero biases (the original's initializers);
    'torch': leave PyTorch's defaults."""
    if scheme == "torch":
        return
    if scheme != "xavier":
        raise ValueError(f"weight_init must be xavier or torch, got {scheme!r}")
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
