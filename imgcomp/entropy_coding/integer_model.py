"""The context model as an exact integer network (IntegerContextModel): integer logits of a
whole symbol volume in one pass (encoding) or step by step along the wavefront (decoding), and
probabilities from them through an integer exp table, so that constriction's range coder
quantizes identical float64 inputs identically on every machine.

The integer network is derived from the classifier's own description of its layers
(ProbClassifier.layers): any depth, width, kernel size and residual skips.

Speed: a layer is one gather of its taps, one matrix product, floor and clamp (weights are
pre-scaled by powers of two, IntegerLayer), on as many positions at once as the order allows.
Encoding computes all logits in one pass, depth slice by depth slice through all layers,
so hidden layers keep only the slices the next one reads (_Slabs).
Decoding runs along the wavefront of imgcomp.entropy_coding.wavefront.
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
    WavefrontPlan,
    ring_size,
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
        box[d:, h:h + volume.height, w:w + volume.width] = self.center_ints[symbols.cpu()]
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
        """Decode a (C, H, W) volume step by step along the wavefront. `decode_step(logits)`
        gets the integer logits (m, L) of the step's symbols in coding order (a view valid
        during the call) and returns their symbols (m,); an exception it raises stops the
        decode."""
        plan = self.plan(shape)
        size = ring_size(self.layers, self.reach)
        rings: list[DecoderRing] = []
        for i in range(len(self.layers)):
            rings.append(DecoderRing(plan, i, size, rings))
        input_rows = rings[0].rows_below
        inputs = np.full((size * input_rows, 1), self.pad_int)
        # Each layer reads the buffer below and writes its own; the last one, the logits.
        rings[0].below = torch.from_numpy(inputs)
        for layer, ring, above in zip(self.layers, rings, rings[1:], strict=False):
            ring.out = above.below = torch.empty(size * ring.rows, layer.weight.shape[1],
                                                 dtype=torch.float64)
        for ring in rings:
            if ring.layer.skip_from is not None:
                ring.skip_source = rings[ring.layer.skip_from].out
        # Work space for the largest step, shared by the layers so that it stays in cache.
        most = max(ring.most_rows for ring in rings)
        gathered = torch.empty(most * max(layer.weight.shape[0] for layer in self.layers),
                               dtype=torch.float64)
        logits = torch.empty(most, self.num_centers, dtype=torch.float64)
        center_ints = self.center_ints.numpy()
        last, decoded = rings[-1], []
        for k, t in enumerate(plan.steps.tolist()):
            phase = t % size
            # The input's plane of step t held step t - size, which no layer reads any more:
            # it becomes padding, and the step's symbols are written in once decoded.
            inputs[phase * input_rows:(phase + 1) * input_rows] = self.pad_int
            for ring in rings:
                lo, hi = ring.lo[k], ring.hi[k]
                if lo == hi:
                    continue
                if hi > ring.filled:
                    ring.fill(hi)
                n, layer, below = hi - lo, ring.layer, ring.below
                g = gathered[:n * layer.weight.shape[0]]
                torch.index_select(below, 0, ring.taps[phase][lo:hi].view(-1),
                                   out=g.view(-1, below.shape[1]))
                start = phase * ring.rows + lo
                out = logits[:n] if ring is last else ring.out[start:start + n]
                torch.addmm(layer.bias, g.view(n, -1), layer.weight, out=out).floor_()
                if ring.skip is not None:
                    out += ring.skip_source.index_select(0, ring.skip[phase][lo:hi])
                out.clamp_(0.0 if layer.relu else -ACT_LIMIT, ACT_LIMIT)
            if last.lo[k] == last.hi[k]:
                continue
            # Coding order within a step: by flat index, i.e. by row.
            rows = last.order[last.lo[k]:last.hi[k]]
            by_row = np.argsort(rows)
            symbols = np.asarray(decode_step(logits[torch.from_numpy(by_row)]),
                                 dtype=np.int64)
            inputs[phase * input_rows + last.input[rows[by_row]], 0] = center_ints[symbols]
            decoded.append(symbols)
        symbols = torch.empty(plan.extents[-1].size, dtype=torch.int64)
        symbols[plan.coding_order] = torch.from_numpy(np.concatenate(decoded))
        return symbols.view(shape)


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
