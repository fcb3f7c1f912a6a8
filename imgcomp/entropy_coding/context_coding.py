"""Entropy coding of the symbol volume with the probability classifier, exactly and fast.

Exactness: the decoder must compute bit-identical probabilities to the encoder, whatever the
thread count, batch shape, kernel choice or device. Floating-point convolutions do not give
that, so for coding the context model is evaluated as an *integer network* (Balle et al.,
"Integer Networks for Data Compression with Latent-Variable Models", ICLR 2019): weights,
biases, inputs and activations are fixed-point integers, stored in float64 tensors whose
every partial sum stays below 2^53, so any summation order gives the exact same integers.
Logits become probabilities through an integer exp table, and constriction's range coder
quantizes identical float64 inputs identically.

The integer network is derived from the classifier's own description of its layers
(ProbClassifier.layers): any depth, width, kernel size and residual skips.

Speed: a layer is one gather of its taps, one matrix product, floor and clamp (weights are
pre-scaled by powers of two, _Layer), on as many positions at once as the order allows.
Encoding computes all logits in one pass, depth slice by depth slice through all layers,
so hidden layers keep only the slices the next one reads (_Slabs). Decoding follows a
wavefront t = 4*c + 2*h + w (for 3x3 kernels): every position of every layer is computed
exactly once, at step t, from cached activations of the layers below (the idea of Fast
PixelCNN++), and all symbols of a step are decoded together. A Kodak image (C=32 x 64 x 96
symbols) takes 376 steps. Each layer keeps only its last few steps (_Ring), with rows sorted
so that a step's outputs are one block written in place, and its taps' buffer slots
precomputed: per step and layer, no index arithmetic and no allocation.

Hostile payloads: decoding stops with BitstreamError as soon as the symbols decoded carry more
information than the payload can hold (_PayloadReader). The decoder's index arrays and caches
grow with the image's rows (C x H), not its pixels, so a payload that runs out early costs
little, however large an image its header claims.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from imgcomp.entropy_coding.bitstream import BitstreamError
from imgcomp.nets.probclass import ContextLayer, ProbClassifier, causal_mask

ACT_FRAC_BITS = 16  # activations and logits are multiples of 2^-16
WEIGHT_BITS = 15  # |integer weight| <= 2^15
ACT_LIMIT = 2.0**26  # activations clamped to +-2^26 / 2^16 = +-1024
# |sum| <= taps*Cin * 2^15 * 2^26: below 2^53 (exact in float64) for taps*Cin < 2^12, e.g.
# 14 taps x k = 64 for 3x3 kernels; _integer_layer checks it.
_EXACT_SUM = 2.0**53
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


def _wavefront_coefficients(reach: int) -> tuple[int, int]:
    """(a, b) of _wavefront_time."""
    b = reach + 1
    return b * reach + reach + 1, b


def _wavefront_time(d: np.ndarray, h: np.ndarray, w: np.ndarray, reach: int) -> np.ndarray:
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
class _Layer:
    """One masked conv as fixed-point taps: weight (taps*Cin, Cout) and bias (Cout,), float64
    multiples of 2^-frac_bits (integers scaled by a power of two: the products with integer
    activations and their sums stay exact, and floor() of the sum is the next integer
    activation, without a rescaling pass), and its offsets."""

    name: str
    weight: torch.Tensor  # the conv's weights, |weight| * 2^frac_bits <= 2^15
    bias: torch.Tensor  # the conv's bias at the activation scale 2^16
    offsets: np.ndarray  # (taps, 3) aligned (depth, h, w) offsets into the layer below
    reach: int  # K//2: the layer's output shrinks by it in front and on each spatial side
    relu: bool
    skip_from: int | None  # its output += that earlier layer's output (aligned), before relu


def _integer_layer(layer: ContextLayer) -> _Layer:
    conv = layer.conv
    weight = conv.weight.detach().double().cpu()  # (Cout, Cin, D, K, K)
    k = weight.shape[-1]
    depth = weight.shape[2]
    mask = causal_mask(k, conv.include_centre)
    taps = [tuple(t) for t in torch.nonzero(mask).tolist()]
    if len(taps) * weight.shape[1] * 2.0**WEIGHT_BITS * ACT_LIMIT >= _EXACT_SUM:
        raise ValueError(f"{layer.name}: {len(taps)} taps x {weight.shape[1]} channels is too "
                         f"wide for exact float64 sums")
    max_abs = float(weight.abs().max()) or 1.0
    frac_bits = int(np.floor(np.log2(2.0**WEIGHT_BITS / max_abs)))
    w_taps = torch.stack([weight[:, :, kd, kh, kw] for kd, kh, kw in taps])  # (T, Cout, Cin)
    w_int = torch.round(w_taps * 2.0**frac_bits).permute(0, 2, 1).reshape(-1, weight.shape[0])
    b_int = torch.round(conv.bias.detach().double().cpu() * 2.0 ** (frac_bits + ACT_FRAC_BITS))
    w_fixed, b_fixed = w_int * 2.0**-frac_bits, b_int * 2.0**-frac_bits
    offsets = np.array([(kd - (depth - 1), kh - k // 2, kw - k // 2) for kd, kh, kw in taps])
    return _Layer(layer.name, w_fixed, b_fixed, offsets, conv.reach, layer.relu,
                  layer.skip_from)


@dataclass
class _Extent:
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


class _Plan:
    """The geometry of one symbol-volume shape: extents[0] is the padded input, extents[i + 1]
    layer i's output (each VALID conv shrinks the box by its reach); the wavefront's steps;
    the coding order."""

    def __init__(self, layers: list[_Layer], shape: tuple[int, int, int], reach: int) -> None:
        self.layers, self.reach = layers, reach
        self.extents = [_Extent(0, 0, 0, *shape)]
        for layer in reversed(layers):  # each layer needs `reach` more of the one below
            e, r = self.extents[0], layer.reach
            self.extents.insert(0, _Extent(e.d0 - r, e.h0 - r, e.w0 - r, e.depth + r,
                                           e.height + 2 * r, e.width + 2 * r))
        # Each extent's first and last times are those of its front and back corners.
        corners = [(e.d0, e.h0, e.w0, e.d0 + e.depth - 1, e.h0 + e.height - 1,
                    e.w0 + e.width - 1) for e in self.extents[1:]]
        self.steps = np.arange(min(int(_wavefront_time(*c[:3], reach)) for c in corners),
                               max(int(_wavefront_time(*c[3:], reach)) for c in corners) + 1)

    @functools.cached_property
    def coding_order(self) -> torch.Tensor:
        return torch.from_numpy(self.extents[-1].wavefront(self.steps[0], self.steps[-1] + 1,
                                                           self.reach)[0])


class IntegerContextModel:
    """The probability classifier in exact integer arithmetic, for entropy coding."""

    def __init__(self, probclass: ProbClassifier, centers: torch.Tensor, pad_value: float
                 ) -> None:
        self.num_centers = centers.numel()
        scale = 2.0**ACT_FRAC_BITS
        self.center_ints = torch.round(centers.detach().double().cpu() * scale)
        self.pad_int = float(torch.round(torch.tensor(pad_value, dtype=torch.float64) * scale))
        self.layers = [_integer_layer(layer) for layer in probclass.layers]
        self.reach = max(layer.reach for layer in self.layers)
        self._check_wavefront()
        _exp_table()  # built once per process: here, not in the first file's decode time

    def _check_wavefront(self) -> None:
        """The inequalities _wavefront_time's order relies on, for these layers."""
        for i, layer in enumerate(self.layers):
            latest = int(_wavefront_time(*layer.offsets.T, self.reach).max())
            if latest > 0 or (i == 0 and latest == 0):
                raise ValueError(f"{layer.name}: its mask is not causal (a tap at wavefront "
                                 f"offset {latest})")
            if layer.skip_from is not None and not 0 <= layer.skip_from < i:
                raise ValueError(f"{layer.name}: skip from layer {layer.skip_from}, not an "
                                 f"earlier one")

    @functools.lru_cache(maxsize=4)  # noqa: B019 -- few shapes per model; coding orders cost
    def plan(self, shape: tuple[int, int, int]) -> _Plan:
        return _Plan(self.layers, shape, self.reach)

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
        size = _ring_size(self.layers, self.reach)
        rings: list[_Ring] = []
        for i in range(len(self.layers)):
            rings.append(_Ring(plan, i, size, rings))
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

    extent: _Extent
    planes: int
    values: torch.Tensor

    def plane(self, d: int) -> int:
        """The first row of slice d."""
        return (d - self.extent.d0) % self.planes * self.extent.height * self.extent.width


class _SlabComputation:
    """Computes one layer's depth slice d from the slices below (and its skip's slice d)."""

    def __init__(self, layer: _Layer, below: _Slabs, out: _Slabs, chunk: int,
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


def _ring_size(layers: list[_Layer], reach: int) -> int:
    """Steps the decoder's buffers keep: one more than the farthest tap back of any layer."""
    return 1 - min(int(_wavefront_time(*layer.offsets.T, reach).min()) for layer in layers)


class _Ring:
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

    def __init__(self, plan: _Plan, i: int, size: int, earlier: list[_Ring]) -> None:
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
            (np.arange(size)[:, None] + _wavefront_time(od, oh, ow, plan.reach)) % size
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


def _row_times(extent: _Extent, reach: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The depth and height of an extent's (depth, height) rows and their wavefront times at
    w = 0."""
    d, h = np.divmod(np.arange(extent.depth * extent.height), extent.height)
    d, h = d + extent.d0, h + extent.h0
    return d, h, _wavefront_time(d, h, 0, reach)


def _rows(extent: _Extent, d: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The (depth, height) row indices of positions in an extent."""
    return (d - extent.d0) * extent.height + (h - extent.h0)


_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


def encode_symbols(model: IntegerContextModel, symbols: torch.Tensor
                   ) -> tuple[np.ndarray, float]:
    """Range-code a (C, H, W) int volume. Returns the compressed uint32 words and the
    cross-entropy in bits of the symbols under the (integer) probabilities used."""
    probs = probabilities(model.logits(symbols))
    ordered = symbols.reshape(-1)[model.coding_order(tuple(symbols.shape))].numpy()
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(ordered.astype(np.int32), _CATEGORICAL, probs)
    bits = float(-np.log2(probs[np.arange(len(ordered)), ordered]).sum())
    return encoder.get_compressed(), bits


# constriction's Categorical(perfect=False) quantizes a probability p (of a distribution
# summing to 1) to w / 2^24 with w <= p * 2^24 + 2 (differences of the floored, scaled CDF,
# plus one count so that no symbol has probability 0). So coding a symbol costs the range
# coder at least -log2(p + 2^-23) bits, whatever the data.
_QUANTIZATION_SLACK = 2.0**-23
# A payload of n words holds at most 32n bits of its symbols' information under the quantized
# probabilities: the coder's 64-bit range starts below 2^64, shrinks by a factor of at most p
# per symbol, grows by 2^32 per word emitted, ends >= 2^32, and sealing emits at least one
# more word. The slack only absorbs float rounding in summing the costs.
_ROUNDING_SLACK_BITS = 1.0


class _PayloadReader:
    """decode_step for IntegerContextModel.decode: range-decodes a step's symbols and raises
    BitstreamError once they carry more information than the payload holds (corrupted or
    truncated data, or a header claiming a larger image than was coded), instead of decoding
    garbage from an exhausted payload."""

    def __init__(self, words: np.ndarray) -> None:
        self.decoder = constriction.stream.queue.RangeDecoder(words)
        self.capacity_bits = 32 * len(words)
        self.spent_bits = 0.0

    def __call__(self, logits: torch.Tensor) -> np.ndarray:
        probs = probabilities(logits)
        try:
            symbols = self.decoder.decode(_CATEGORICAL, probs)
        except (AssertionError, ValueError, RuntimeError) as e:  # constriction on invalid data
            raise BitstreamError(f"payload corrupted: the range decoder says: {e}") from e
        chosen = np.minimum(probs[np.arange(len(symbols)), symbols] + _QUANTIZATION_SLACK, 1.0)
        self.spent_bits -= float(np.log2(chosen).sum())
        if self.spent_bits > self.capacity_bits + _ROUNDING_SLACK_BITS:
            raise BitstreamError(f"payload exhausted: the symbols decoded so far carry at least "
                                 f"{self.spent_bits:.0f} bits, more than the "
                                 f"{self.capacity_bits}-bit payload holds (corrupted or "
                                 f"truncated file)")
        return symbols


def decode_symbols(model: IntegerContextModel, words: np.ndarray,
                   shape: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of encode_symbols; BitstreamError when the payload cannot be the coded volume."""
    return model.decode(shape, _PayloadReader(words))
