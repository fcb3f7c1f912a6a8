"""The wavefront along which symbols are coded, and the decoder's buffers along it.

Decoding follows a wavefront t = 4*c + 2*h + w (for 3x3 kernels): every position of every layer
is computed exactly once, at step t, from cached activations of the layers below (the idea of
Fast PixelCNN++), and all symbols of a step are decoded together. A Kodak image (C=32 x 64 x 96
symbols) takes 376 steps. Each layer keeps only its last few steps (DecoderRing), with rows
sorted so that a step's outputs are one block written in place, and its taps' buffer slots
precomputed: per step and layer, no index arithmetic and no allocation.

The encoder's depth-slice pass is imgcomp.entropy_coding.integer_model's; both use the geometry
(`WavefrontPlan`) and the coding order defined here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from imgcomp.entropy_coding.integer_layers import IntegerLayer


def _wavefront_coefficients(reach: int) -> tuple[int, int]:
    """(a, b) of wavefront_time."""
    b = reach + 1
    return b * reach + reach + 1, b


def wavefront_time(d: np.ndarray, h: np.ndarray, w: np.ndarray, reach: int) -> np.ndarray:
    """t = a*c + b*h + w for kernels reaching at most `reach` = K//2 positions per layer (a=4,
    b=2 for K=3). Whatever the depth, every tap of a layer lies at a time <= its own (the
    layer below, computed earlier in the same step; likewise a residual skip, which reads an
    earlier layer at the same position) and every symbol tap of the first layer, whose mask
    excludes the centre, at a time < its own (decoded at an earlier step): within a channel,
    a row above reaches `reach` columns right (b > reach); earlier channels are visible in a
    window of +-reach rows and columns (a > b*reach + reach). IntegerContextModel checks
    these inequalities for its layers."""
    a, b = _wavefront_coefficients(reach)
    return a * d + b * h + w


@dataclass
class Extent:
    """The aligned coordinate box a layer's output covers (VALID convs shrink it)."""

    d0: int
    h0: int
    w0: int
    depth: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.depth * self.height * self.width

    def wavefront(self, t0: int, t1: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices and wavefront times of the positions at times t0 <= t < t1, in coding
        order (by time, then flat index), made row by row without visiting the others."""
        row_time = _row_times(self, reach)[2]  # the time of w = 0 in each (d, h) row
        w_lo = np.clip(t0 - row_time, self.w0, self.w0 + self.width)
        w_hi = np.clip(t1 - row_time, self.w0, self.w0 + self.width)
        counts = w_hi - w_lo
        rows = np.repeat(np.arange(row_time.size), counts)
        w = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts - w_lo, counts)
        order = np.argsort(row_time[rows] + w, kind="stable")  # generated in flat order
        rows, w = rows[order], w[order]
        return rows * self.width + (w - self.w0), row_time[rows] + w


class WavefrontPlan:
    """The geometry of one symbol-volume shape: extents[0] is the padded input, extents[i + 1]
    layer i's output (each VALID conv shrinks the box by its reach); the wavefront's steps;
    the coding order."""

    def __init__(self, layers: list[IntegerLayer], shape: tuple[int, int, int], reach: int) -> None:
        self.layers, self.reach = layers, reach
        self.extents = [Extent(0, 0, 0, *shape)]
        for layer in reversed(layers):  # each layer needs `reach` more of the one below
            e, r = self.extents[0], layer.reach
            self.extents.insert(0, Extent(e.d0 - r, e.h0 - r, e.w0 - r, e.depth + r,
                                           e.height + 2 * r, e.width + 2 * r))
        # Each extent's first and last times are those of its front and back corners.
        corners = [(e.d0, e.h0, e.w0, e.d0 + e.depth - 1, e.h0 + e.height - 1,
                    e.w0 + e.width - 1) for e in self.extents[1:]]
        self.steps = np.arange(min(int(wavefront_time(*c[:3], reach)) for c in corners),
                               max(int(wavefront_time(*c[3:], reach)) for c in corners) + 1)

    @functools.cached_property
    def coding_order(self) -> torch.Tensor:
        return torch.from_numpy(self.extents[-1].wavefront(self.steps[0], self.steps[-1] + 1,
                                                           self.reach)[0])


def ring_size(layers: list[IntegerLayer], reach: int) -> int:
    """Steps the decoder's buffers keep: one more than the farthest tap back of any layer."""
    return 1 - min(int(wavefront_time(*layer.offsets.T, reach).min()) for layer in layers)


class DecoderRing:
    """The decoder's view of layer i. Each layer's output is kept for the last `size`
    wavefront steps only, in planes of its (depth, height) rows: the position of row r at
    step t (w = t - the row's time at w = 0) lies in plane t % size. Within a plane the rows
    are sorted by their time at w = 0 (order), so the rows of a step, those whose time lies in
    (t - w0 - width, t - w0], are one block [lo, hi) that the matrix product writes in place.
    Taps lie at most size - 1 steps back, so the buffers stay small and in cache, and a decode
    that stops early has touched little memory, however wide its image.

    taps[t % size][j]: the buffer slots below of the taps of sorted row j at step t;
    skip[t % size][j]: those of its skip; input[r]: the padded input's row of (unsorted) row r
    (the last layer's symbols are written there)."""

    below: torch.Tensor  # the decoder's buffers: the layer below's output (or the input),
    out: torch.Tensor  # this layer's (hidden layers only),
    skip_source: torch.Tensor  # and its skip's source

    _FILL_ROWS = 2048

    def __init__(self, plan: WavefrontPlan, i: int, size: int, earlier: list[DecoderRing]) -> None:
        """`earlier`: the rings of layers 0 .. i - 1 (their row orders)."""
        layer, below, extent = plan.layers[i], plan.extents[i], plan.extents[i + 1]
        self.layer = layer
        d, h, row_times = _row_times(extent, plan.reach)
        self.order = np.argsort(row_times, kind="stable")
        self.rank = np.empty_like(self.order)  # rank[r]: where row r lies in a plane
        self.rank[self.order] = np.arange(len(self.order))
        times = row_times[self.order]
        self.rows = len(self.order)
        self.input = _rows(plan.extents[0], d, h)
        self.lo = np.searchsorted(times, plan.steps - extent.w0 - extent.width + 1).tolist()
        self.hi = np.searchsorted(times, plan.steps - extent.w0, side="right").tolist()
        self.most_rows = max(hi - lo for lo, hi in zip(self.lo, self.hi, strict=True))
        d, h = d[self.order], h[self.order]
        od, oh, ow = layer.offsets.T
        self.rows_below = below.depth * below.height
        # Rows below in the sorted order of layer i - 1 (the padded input keeps its own).
        rank = earlier[i - 1].rank if i else np.arange(self.rows_below)
        self._taps = torch.from_numpy(rank[_rows(below, d, h)[:, None] + od * below.height + oh])
        self._tap_planes = torch.from_numpy(
            (np.arange(size)[:, None] + wavefront_time(od, oh, ow, plan.reach)) % size
            * self.rows_below)[:, None]
        # One copy per plane (row count x taps x size), so that a step needs no index
        # arithmetic, filled as the decode reaches its rows (a refused file costs little).
        self.taps = torch.empty(size, self.rows, len(od), dtype=torch.int64)
        self.filled = 0
        self.skip = None
        if layer.skip_from is not None:
            source = plan.extents[layer.skip_from + 1]
            skip = earlier[layer.skip_from].rank[_rows(source, d, h)]
            self.skip = [torch.from_numpy(skip + phase * source.depth * source.height)
                         for phase in range(size)]

    def fill(self, rows: int) -> None:
        """Make taps[:, :rows] (and some rows more) valid."""
        end = min(self.rows, max(rows, self.filled + self._FILL_ROWS))
        self.taps[:, self.filled:end] = self._taps[self.filled:end] + self._tap_planes
        self.filled = end


def _row_times(extent: Extent, reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The depth and height of an extent's (depth, height) rows and their wavefront times at
    w = 0."""
    d, h = np.divmod(np.arange(extent.depth * extent.height), extent.height)
    d, h = d + extent.d0, h + extent.h0
    return d, h, wavefront_time(d, h, 0, reach)


def _rows(extent: Extent, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (depth, height) row indices of positions in an extent."""
    return (d - extent.d0) * extent.height + (h - extent.h0)
