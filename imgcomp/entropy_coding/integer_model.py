"""The context model as an exact integer network (IntegerContextModel): integer logits of a
whole symbol volume in one pass (encoding small volumes) or step by step along the wavefront
(decoding, and encoding large volumes in bounded memory), and
probabilities from them through an integer exp table, so that constriction's range coder
quantizes identical float64 inputs identically on every machine.

The integer network is derived from the classifier's own description of its layers
(ProbClassifier.layers): any depth, width, kernel size and residual skips.

Speed: a layer is one gather of its taps, one matrix product, floor and clamp (weights are
pre-scaled by powers of two, IntegerLayer), on as many positions at once as the order allows.
The one pass computes all logits depth slice by depth slice through all layers, so hidden
layers keep only the slices the next one reads (_Slabs), but the logits of the whole volume
are kept. `walk` runs along the wavefront of imgcomp.entropy_coding.wavefront, the same
integer operations step by step, in memory that grows with the volume's rows (C x H).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from imgcomp.entropy_coding.integer_layers import (
    ACT_FRAC_BITS,
    ACT_LIMIT,
    IntegerLayer,
    integer_layer,
)
from imgcomp.entropy_coding.wavefront import (
    DecoderRing,
    Extent,
    RowWindow,
    WavefrontPlan,
    ring_size,
    row_times,
    wavefront_time,
)
from imgcomp.nets.probclass import ProbClassifier

_TABLE_FRAC_BITS = 12  # the exp table's resolution in logit units: 2^-12
_EXP_TABLE_SIZE = 24 << _TABLE_FRAC_BITS  # exp(-24) ~ 4e-11: smaller probabilities are floored
# round(2^32 * exp(-2^-12)), fixed here so the table does not depend on the platform's exp.
_EXP_STEP = 4293918848


@functools.lru_cache(maxsize=1)
def _exp_table() -> np.ndarray:
    """T[i] ~ 2^32 * exp(-i / 2^12), at least 1, built with integer arithmetic only."""
    table = np.zeros(_EXP_TABLE_SIZE, dtype=np.float64)
    value = 1 << 32
    for i in range(_EXP_TABLE_SIZE):
        table[i] = max(value, 1)
        value = (value * _EXP_STEP) >> 32
    return table


def probabilities(logits: torch.Tensor) -> np.ndarray:
    """Integer logits (m, L) at scale 2^16 -> (m, L) float64 probabilities, deterministically."""
    lg = logits.cpu().numpy().astype(np.int64) >> (ACT_FRAC_BITS - _TABLE_FRAC_BITS)
    diff = np.minimum(lg.max(axis=1, keepdims=True) - lg, _EXP_TABLE_SIZE - 1)
    freq = _exp_table()[diff]
    return freq / freq.sum(axis=1, keepdims=True)


class IntegerContextModel:
    """The probability classifier in exact integer arithmetic, for entropy coding."""

    def __init__(self, probclass: ProbClassifier, centers: torch.Tensor, pad_value: float
                 ) -> None:
        self.num_centers = centers.numel()
        scale = 2.0**ACT_FRAC_BITS
        self.center_ints = torch.round(centers.detach().double().cpu() * scale)
        self.pad_int = float(torch.round(torch.tensor(pad_value, dtype=torch.float64) * scale))
        self.layers = [integer_layer(layer) for layer in probclass.layers]
        self.reach = max(layer.reach for layer in self.layers)
        self._check_wavefront()
        _exp_table()  # built once per process: here, not in the first file's decode time

    def _check_wavefront(self) -> None:
        """The inequalities wavefront_time's order relies on, for these layers."""
        for i, layer in enumerate(self.layers):
            latest = int(wavefront_time(*layer.offsets.T, self.reach).max())
            if latest > 0 or (i == 0 and latest == 0):
                raise ValueError(f"{layer.name}: its mask is not causal (a tap at wavefront "
                                 f"offset {latest})")
            if layer.skip_from is not None and not 0 <= layer.skip_from < i:
                raise ValueError(f"{layer.name}: skip from layer {layer.skip_from}, not an "
                                 f"earlier one")

    @functools.lru_cache(maxsize=4)  # noqa: B019 -- few shapes per model; coding orders cost
    def plan(self, shape: tuple[int, int, int]) -> WavefrontPlan:
        return WavefrontPlan(self.layers, shape, self.reach)

    def coding_order(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Flat (c, h, w) indices of the symbols in the order they are coded."""
        return self.plan(shape).coding_order

    def one_pass_bytes(self, shape: tuple[int, int, int]) -> int:
        """About the memory a one-pass encode takes for a (C, H, W) volume: reach + 1 depth
        slices of each hidden layer, and per symbol its logits and input (float64) and the
        arrays that sort it into coding order."""
        plan = self.plan(shape)
        slices = sum((self.reach + 1) * e.height * e.width * layer.weight.shape[1]
                     for e, layer in zip(plan.extents[1:-1], self.layers, strict=False))
        return 8 * (slices + plan.extents[-1].size * (self.num_centers + 8))

    def logits(self, symbols: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Integer logits (C*H*W, L) of a (C, H, W) symbol volume in coding order, in one
        parallel pass, depth slice by depth slice through all layers, so that each hidden
        layer keeps only the reach + 1 slices the next one reads (a few MB, in cache, whatever
        the image size). A slice is computed in chunks of whole rows of about `chunk` positions:
        small enough for the gathered taps to stay in cache (1024: ~2.5x faster than 16384 on
        CPU), and contiguous, so results are written in place."""
        plan = self.plan(tuple(symbols.shape))
        padded, volume = plan.extents[0], plan.extents[-1]
        box = torch.full((padded.depth, padded.height, padded.width), self.pad_int,
                         dtype=torch.float64)
        d, h, w = volume.d0 - padded.d0, volume.h0 - padded.h0, volume.w0 - padded.w0
        box[d:, h:h + volume.height, w:w + volume.width] = self.center_ints[symbols.cpu().long()]
        # Slices of the input and the logits are all kept; those of hidden layers cyclically.
        slabs = [_Slabs(padded, padded.depth, box.view(-1, 1))]
        for i, layer in enumerate(self.layers):
            extent = plan.extents[i + 1]
            planes = extent.depth if i == len(self.layers) - 1 else self.reach + 1
            slabs.append(_Slabs(extent, planes, torch.empty(
                planes * extent.height * extent.width, layer.weight.shape[1],
                dtype=torch.float64)))
        computations = [_SlabComputation(layer, slabs[i], slabs[i + 1], chunk, None
                                         if layer.skip_from is None else
                                         slabs[layer.skip_from + 1])
                        for i, layer in enumerate(self.layers)]
        for d in range(plan.extents[1].d0, volume.d0 + volume.depth):
            for computation in computations:
                computation(d)
        return slabs[-1].values[plan.coding_order]

    def decode(self, shape: tuple[int, int, int], decode_step) -> torch.Tensor:
        """Decode a (C, H, W) uint8 volume step by step along the wavefront. `decode_step(logits)`
        gets the integer logits (m, L) of the step's symbols in coding order (a view valid
        during the call) and returns their symbols (m,); an exception it raises stops the
        decode."""
        volume = torch.empty(int(np.prod(shape)), dtype=torch.uint8)

        def step(logits: torch.Tensor, positions: torch.Tensor) -> np.ndarray:
            symbols = np.asarray(decode_step(logits))
            volume[positions] = torch.from_numpy(symbols.astype(np.uint8, copy=False))
            return symbols

        self.walk(shape, step)
        return volume.view(shape)

    def walk(self, shape: tuple[int, int, int], step) -> None:
        """Walk the wavefront through a (C, H, W) volume: `step(logits, positions)` gets the
        integer logits (m, L) of each step's symbols in coding order (a view valid during the
        call) and their flat (c, h, w) indices, and returns their symbols (m,) (decoded, or
        known when encoding). Memory: each layer's last ring_size steps of the rows a step
        reaches (RowWindow), plus tables of ~500 bytes per (C, H) row."""
        plan = self.plan(shape)
        size = ring_size(self.layers, self.reach)
        window = RowWindow(plan, plan.extents[0], size)
        rings: list[DecoderRing] = []
        for i in range(len(self.layers)):
            rings.append(DecoderRing(plan, i, size, window, rings))
        inputs = np.full((size * window.capacity, 1), self.pad_int)
        # Each layer reads the buffer below and writes its own; the last one, the logits.
        rings[0].below = torch.from_numpy(inputs)
        for layer, ring, above in zip(self.layers, rings, rings[1:], strict=False):
            ring.out = above.below = torch.empty(size * ring.window.capacity,
                                                 layer.weight.shape[1], dtype=torch.float64)
        for ring in rings:
            if ring.layer.skip_from is not None:
                ring.skip_source = rings[ring.layer.skip_from].out
        # Work space for the largest step, shared by the layers so that it stays in cache.
        most = max(ring.window.most_rows for ring in rings)
        gathered = torch.empty(most * max(layer.weight.shape[0] for layer in self.layers),
                               dtype=torch.float64)
        slots = torch.empty(most * max(len(layer.offsets) for layer in self.layers),
                            dtype=torch.int32)
        logits = torch.empty(most, self.num_centers, dtype=torch.float64)
        center_ints = self.center_ints.numpy()
        last = rings[-1]
        # The flat index of (unsorted) row r's position at step t is row_start[r] + t.
        row_start = (np.arange(last.window.rank.size) * shape[2]
                     - row_times(plan.extents[-1], self.reach)[2])
        for k, t in enumerate(plan.steps.tolist()):
            phase = t % size
            # The input's plane of step t held step t - size, which no layer reads any more:
            # it becomes padding, and the step's symbols are written in once known.
            inputs[phase * window.capacity:(phase + 1) * window.capacity] = self.pad_int
            for ring in rings:
                lo, hi = ring.window.lo[k], ring.window.hi[k]
                if lo == hi:
                    continue
                n, layer, below = hi - lo, ring.layer, ring.below
                taps = slots[:n * len(layer.offsets)]
                torch.add(ring.tap_rows[lo:hi], ring.tap_planes[phase], out=taps.view(n, -1))
                g = gathered[:n * layer.weight.shape[0]].view(n, -1)
                torch.index_select(below, 0, taps, out=g.view(-1, below.shape[1]))
                for a, b, out in _blocks(ring, lo, n, phase, logits if ring is last else None):
                    torch.addmm(layer.bias, g[a:b], layer.weight, out=out).floor_()
                    if ring.skip is not None:
                        out += ring.skip_source.index_select(0, ring.skip[phase][lo + a:lo + b])
                    out.clamp_(0.0 if layer.relu else -ACT_LIMIT, ACT_LIMIT)
            lo, hi = last.window.lo[k], last.window.hi[k]
            if lo == hi:
                continue
            # Coding order within a step: by flat index, i.e. by (unsorted) row.
            by_row = np.argsort(last.window.order[lo:hi])
            rows = last.window.order[lo:hi][by_row]
            symbols = np.asarray(step(logits[torch.from_numpy(by_row)],
                                      torch.from_numpy(row_start[rows] + t)), dtype=np.int64)
            inputs[phase * window.capacity + last.input[lo + by_row], 0] = center_ints[symbols]


def _blocks(ring: DecoderRing, lo: int, n: int, phase: int, logits: torch.Tensor | None
            ) -> list[tuple[int, int, torch.Tensor]]:
    """Where a step writes rows lo .. lo + n - 1 of a ring: (first, stop, buffer rows) of
    its block of slots, two blocks where the slots wrap around; the last layer writes the
    first n rows of `logits`."""
    if logits is not None:
        return [(0, n, logits[:n])]
    capacity = ring.window.capacity
    first, plane = lo % capacity, phase * capacity
    split = min(n, capacity - first)
    blocks = [(0, split, ring.out[plane + first:plane + first + split])]
    if split < n:
        blocks.append((split, n, ring.out[plane:plane + n - split]))
    return blocks


@dataclass
class _Slabs:
    """A layer's output for the encoder, kept by depth slice: slice d in plane
    (d - extent.d0) % planes of `values` (planes x height x width rows, channels)."""

    extent: Extent
    planes: int
    values: torch.Tensor

    def plane(self, d: int) -> int:
        """The first row of slice d."""
        return (d - self.extent.d0) % self.planes * self.extent.height * self.extent.width


class _SlabComputation:
    """Computes one layer's depth slice d from the slices below (and its skip's slice d)."""

    def __init__(self, layer: IntegerLayer, below: _Slabs, out: _Slabs, chunk: int,
                 skip: _Slabs | None) -> None:
        self.layer, self.below, self.out, self.skip = layer, below, out, skip
        e, b = out.extent, below.extent
        od, oh, ow = layer.offsets.T
        self.tap_depths = od
        # Rows below of each output row's first position plus its taps along the row, to which
        # the tap's slice below adds its plane.
        self.row_starts = torch.from_numpy(
            (np.arange(e.height) + e.h0 - b.h0) * b.width + e.w0 - b.w0)[:, None, None]
        self.along = torch.arange(e.width)[:, None] + torch.from_numpy(oh * b.width + ow)
        if skip is not None:
            s = skip.extent
            self.skip_rows = torch.from_numpy(
                (np.arange(e.height) + e.h0 - s.h0) * s.width + e.w0 - s.w0)[:, None] \
                + torch.arange(e.width)
        self.rows = max(1, chunk // e.width)

    def __call__(self, d: int) -> None:
        e, layer = self.out.extent, self.layer
        if not e.d0 <= d < e.d0 + e.depth:
            return
        taps = self.along + torch.tensor([self.below.plane(d + od) for od in self.tap_depths])
        start = self.out.plane(d)
        for r0 in range(0, e.height, self.rows):
            r1 = min(r0 + self.rows, e.height)
            gathered = self.below.values.index_select(
                0, (self.row_starts[r0:r1] + taps).view(-1))
            out = self.out.values[start + r0 * e.width:start + r1 * e.width]
            torch.addmm(layer.bias, gathered.view(len(out), -1), layer.weight,
                        out=out).floor_()
            if self.skip is not None:
                out += self.skip.values.index_select(
                    0, (self.skip_rows[r0:r1] + self.skip.plane(d)).view(-1))
            out.clamp_(0.0 if layer.relu else -ACT_LIMIT, ACT_LIMIT)
