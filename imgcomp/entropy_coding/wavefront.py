"""The wavefront along which symbols are coded, and the decoder's buffers along it.

Decoding follows a wavefront t = 4*c + 2*h + w (for 3x3 kernels): every position of every layer
is computed exactly once, at step t, from cached activations of the layers below (the idea of
Fast PixelCNN++), and all symbols of a step are decoded together. A Kodak image (C=32 x 64 x 96
symbols) takes 376 steps. Each layer keeps only its last few steps (DecoderRing), with rows
sorted so that a step's outputs are one block written in place, and its taps' buffer slots
precomputed but for one offset per plane: per step and layer, one small addition and no
allocation. Encoding a large volume walks the same wavefront with its symbols known.

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
        row_time = row_times(self, reach)[2]  # the time of w = 0 in each (d, h) row
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


class RowWindow:
    """The (depth, height) rows of an extent along the wavefront: sorted by their time at
    w = 0 (order; rank[r]: where row r lies), the rows with a position at step k are one block
    [lo[k], hi[k]) of that order, and at most `capacity` rows have a position in any `size`
    consecutive steps, so that a buffer keeping the last `size` steps needs `capacity` slots a
    step, row j in slot j % capacity, however tall the volume (C x H rows; a step's rows are
    those of about C x W / 2 of them)."""

    def __init__(self, plan: WavefrontPlan, extent: Extent, size: int) -> None:
        d, h, times = row_times(extent, plan.reach)
        self.order = np.argsort(times, kind="stable")
        self.rank = np.empty_like(self.order)
        self.rank[self.order] = np.arange(len(self.order))
        self.d, self.h = d[self.order], h[self.order]
        times = times[self.order]
        lo = np.searchsorted(times, plan.steps - extent.w0 - extent.width + 1)
        hi = np.searchsorted(times, plan.steps - extent.w0, side="right")
        self.lo, self.hi = lo.tolist(), hi.tolist()
        self.most_rows = int((hi - lo).max())
        first = np.concatenate([np.full(size - 1, lo[0]), lo])[:len(lo)]  # lo, size - 1 back
        self.capacity = max(int((hi - first).max()), 1)

    def slots(self, extent: Extent, d: np.ndarray, h: np.ndarray) -> np.ndarray:
        """The slots (within a step's plane) of rows (d, h) of `extent`, this window's."""
        return self.rank[_rows(extent, d, h)] % self.capacity


class DecoderRing:
    """The wavefront's view of layer i. Each layer's output is kept for the last `size`
    wavefront steps only, in planes of `window.capacity` slots of its (depth, height) rows:
    the position of row r at step t (w = t - the row's time at w = 0) lies in plane t % size,
    slot rank[r] % capacity (RowWindow). So the rows of a step are one block [lo, hi) of slots
    (two where it wraps around) that the matrix product writes in place. Taps lie at most
    size - 1 steps back, so the buffers stay small and in cache, and a decode that stops early
    has touched little memory, however large its image.

    tap_rows[j] + tap_planes[t % size]: the buffer slots below of the taps of sorted row j
    at step t; skip[t % size][j]: those of its skip; input[j]: the padded input's slot of
    sorted row j (the last layer's symbols are written there)."""

    below: torch.Tensor  # the buffers: the layer below's output (or the input),
    out: torch.Tensor  # this layer's (hidden layers only),
    skip_source: torch.Tensor  # and its skip's source

    def __init__(self, plan: WavefrontPlan, i: int, size: int, inputs: RowWindow,
                 earlier: list[DecoderRing]) -> None:
        """`inputs`: the padded input's window; `earlier`: the rings of layers 0 .. i - 1."""
        layer, below, extent = plan.layers[i], plan.extents[i], plan.extents[i + 1]
        self.layer = layer
        self.window = RowWindow(plan, extent, size)
        d, h = self.window.d, self.window.h
        self.input = inputs.slots(plan.extents[0], d, h)
        od, oh, ow = layer.offsets.T
        below_window = earlier[i - 1].window if i else inputs
        # Buffer slots are int32 (half the memory of int64; index_select takes either). A step
        # adds its plane offsets (one small addition), so the tables grow with the rows, not
        # with rows x size.
        self.tap_rows = torch.from_numpy(below_window.slots(
            below, d[:, None] + od, h[:, None] + oh).astype(np.int32))
        self.tap_planes = torch.from_numpy(
            ((np.arange(size)[:, None] + wavefront_time(od, oh, ow, plan.reach)) % size
             * below_window.capacity).astype(np.int32))
        self.skip = None
        if layer.skip_from is not None:
            source = earlier[layer.skip_from].window
            skip = source.slots(plan.extents[layer.skip_from + 1], d, h)
            self.skip = [torch.from_numpy((skip + phase * source.capacity).astype(np.int32))
                         for phase in range(size)]


def row_times(extent: Extent, reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The depth and height of an extent's (depth, height) rows and their wavefront times at
    w = 0."""
    d, h = np.divmod(np.arange(extent.depth * extent.height), extent.height)
    d, h = d + extent.d0, h + extent.h0
    return d, h, wavefront_time(d, h, 0, reach)


def _rows(extent: Extent, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (depth, height) row indices of positions in an extent."""
    return (d - extent.d0) * extent.height + (h - extent.h0)
