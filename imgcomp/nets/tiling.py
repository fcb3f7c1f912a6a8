"""Tiles for coding an image in bounded memory: the latent grid is cut into tiles, and the
encoder (or decoder) runs on each tile with a halo of latent positions around it wide enough
that the tile's outputs equal what the whole-image network computes (up to float rounding).

The halo is the network's receptive field, computed from its convolutions (`input_span` of
each Conv2d / ConvTranspose2d, in registration order, which is the order they run in: the
residual skips are identities and widen nothing). Tiles lie on the stride-8 grid, so every
crop is a multiple of 8 pixels and each layer sees the same padding (TensorFlow 'SAME' pads
by the input size) and the same alignment as in the whole image; at the image's borders a
crop ends where the image does and is padded as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from imgcomp.nets.autoencoder import Conv2d, ConvTranspose2d
from imgcomp.nets.shapes import SUBSAMPLING


def input_span(network: nn.Module, start: int, stop: int, dim: int) -> tuple[int, int]:
    """The input positions along dim that the network's outputs [start, stop) read."""
    for conv in reversed([m for m in network.modules()
                          if isinstance(m, (Conv2d, ConvTranspose2d))]):
        start, stop = conv.input_span(start, stop, dim)
    return start, stop


def decoder_halo(decoder: nn.Module, dim: int) -> tuple[int, int]:
    """Latent positions (before, after) along dim that a latent tile's pixels also read."""
    first, last = input_span(decoder, 0, SUBSAMPLING, dim)  # the pixels of latent position 0
    return max(-first, 0), max(last - 1, 0)


def encoder_halo(encoder: nn.Module, dim: int) -> tuple[int, int]:
    """Latent positions (before, after) along dim whose pixels a latent tile also reads."""
    first, last = input_span(encoder, 0, 1, dim)  # the pixels latent position 0 reads
    return max(-(first // SUBSAMPLING), 0), max(-(-(last - SUBSAMPLING) // SUBSAMPLING), 0)


@dataclass(frozen=True)
class Tile:
    """A tile [top, bottom) x [left, right) of the latent grid and the crop
    [crop_top, crop_bottom) x [crop_left, crop_right) it is computed from (its halo, cut at
    the grid's borders)."""

    top: int
    bottom: int
    left: int
    right: int
    crop_top: int
    crop_bottom: int
    crop_left: int
    crop_right: int

    def inner(self, scale: int = 1) -> tuple[slice, slice]:
        """The tile within its crop's outputs, `scale` output positions per latent one."""
        return (slice(scale * (self.top - self.crop_top), scale * (self.bottom - self.crop_top)),
                slice(scale * (self.left - self.crop_left),
                      scale * (self.right - self.crop_left)))


def _cuts(size: int, tile: int) -> list[tuple[int, int]]:
    """`size` cut into ceil(size / tile) parts of nearly equal length."""
    parts = -(-size // tile)
    bounds = [size * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def tiles(height: int, width: int, tile: int, halo_rows: tuple[int, int],
          halo_cols: tuple[int, int]) -> list[Tile]:
    """Tiles of at most tile x tile positions covering a height x width latent grid, in
    row-major order, with their crops (halos `halo_rows` above and below, `halo_cols` left
    and right, cut at the grid's borders)."""
    return [Tile(top, bottom, left, right,
                 max(top - halo_rows[0], 0), min(bottom + halo_rows[1], height),
                 max(left - halo_cols[0], 0), min(right + halo_cols[1], width))
            for top, bottom in _cuts(height, tile) for left, right in _cuts(width, tile)]
