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

Speed: encoding computes all logits in one pass over the volume. Decoding follows a wavefront
t = 4*c + 2*h + w (for 3x3 kernels): every position of every layer is computed exactly
once, at step t, from cached activations of the layers below (the idea of Fast PixelCNN++),
and all symbols of a step are decoded together. A Kodak image (C=32 x 64 x 96 symbols)
takes 376 steps. The caches keep only the last few steps of each layer (_Ring), so they stay
in the processor's cache; weights are pre-scaled by powers of two (_Layer), so a layer is
one gather, one matrix product, floor and clamp.

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

from imgcomp.bitstream import BitstreamError
from imgcomp.probclass import ContextLayer, ProbClassifier, causal_mask

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

    def coords(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (depth, height, width) coordinates of flat indices."""
        dh, w = np.divmod(flat, self.width)
        d, h = np.divmod(dh, self.height)
        return d + self.d0, h + self.h0, w + self.w0

    def flat(self, d: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
        return ((d - self.d0) * self.height + (h - self.h0)) * self.width + (w - self.w0)

    def wavefront(self, t0: int, t1: int, reach: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices and wavefront times of the positions at times t0 <= t < t1, in coding
        order (by time, then flat index), made row by row without visiting the others."""
        a, b = _wavefront_coefficients(reach)
        d = np.arange(self.depth)[:, None] + self.d0
        h = np.arange(self.height) + self.h0
        row_time = (a * d + b * h).ravel()  # the time of w = 0 in each (d, h) row
        w_lo = np.clip(t0 - row_time, self.w0, self.w0 + self.width)
        w_hi = np.clip(t1 - row_time, self.w0, self.w0 + self.width)
        counts = w_hi - w_lo
        rows = np.repeat(np.arange(row_time.size), counts)
        w = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts - w_lo, counts)
        order = np.argsort(row_time[rows] + w, kind="stable")  # generated in flat order
        rows, w = rows[order], w[order]
        return rows * self.width + (w - self.w0), row_time[rows] + w


@dataclass
class _Positions:
    """Positions of one layer's output: their flat indices, their neighbours in the layer below
    (flat indices, `taps` per position in a row) and the positions their skip reads (None
    without one)."""

    flat: torch.Tensor
    neighbours: torch.Tensor
    taps: int
    skip: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.flat)


class _Plan:
    """The geometry of one symbol-volume shape: extents[0] is the padded input, extents[i + 1]
    layer i's output; the neighbours of a position are its aligned position in the layer
    below plus one constant flat offset per tap (tap_offsets[i]). The encoder's index arrays
    are made on demand for some positions (`positions`); the decoder's come from _Ring."""

    def __init__(self, layers: list[_Layer], shape: tuple[int, int, int], reach: int) -> None:
        self.layers, self.reach = layers, reach
        self.extents = [_Extent(0, 0, 0, *shape)]
        for layer in reversed(layers):  # each layer needs `reach` more of the one below
            e, r = self.extents[0], layer.reach
            self.extents.insert(0, _Extent(e.d0 - r, e.h0 - r, e.w0 - r, e.depth + r,
                                           e.height + 2 * r, e.width + 2 * r))
        self.tap_offsets = []
        for layer, below in zip(layers, self.extents[:-1], strict=True):
            od, oh, ow = layer.offsets.T
            self.tap_offsets.append((od * below.height + oh) * below.width + ow)
        # Each extent's first and last times are those of its front and back corners.
        corners = [(e.d0, e.h0, e.w0, e.d0 + e.depth - 1, e.h0 + e.height - 1,
                    e.w0 + e.width - 1) for e in self.extents[1:]]
        self.steps = np.arange(min(int(_wavefront_time(*c[:3], reach)) for c in corners),
                               max(int(_wavefront_time(*c[3:], reach)) for c in corners) + 1)

    def positions(self, i: int, flat: np.ndarray) -> _Positions:
        """Index arrays of the positions `flat` of layer i's output."""
        d, h, w = self.extents[i + 1].coords(flat)
        neighbours = self.extents[i].flat(d, h, w)[:, None] + self.tap_offsets[i]
        skip_from = self.layers[i].skip_from
        return _Positions(
            torch.from_numpy(flat), torch.from_numpy(neighbours.ravel()), neighbours.shape[1],
            None if skip_from is None else
            torch.from_numpy(self.extents[skip_from + 1].flat(d, h, w)))

    def input_slots(self, flat: np.ndarray) -> torch.Tensor:
        """Layer 0 (padded input) positions of the symbols at flat indices of the volume."""
        return torch.from_numpy(self.extents[0].flat(*self.extents[-1].coords(flat)))

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

    def _compute(self, i: int, caches: list[torch.Tensor], positions: _Positions) -> None:
        """Compute layer i's output at `positions` from the layers below."""
        layer = self.layers[i]
        # (P * taps, Cin) -> (P, taps * Cin); index_select gathers ~2x faster than indexing.
        gathered = caches[i].index_select(0, positions.neighbours).view(len(positions), -1)
        out = torch.addmm(layer.bias, gathered, layer.weight).floor_()
        if layer.skip_from is not None:
            out += caches[layer.skip_from + 1].index_select(0, positions.skip)
        out.clamp_(0.0 if layer.relu else -ACT_LIMIT, ACT_LIMIT)
        caches[i + 1].index_copy_(0, positions.flat, out)

    def _empty_caches(self, plan: _Plan) -> list[torch.Tensor]:
        """The encoder's activations: the padded input with its padding filled in (the symbols
        are written in), and uninitialized layer outputs (the pass computes every position
        before any layer reads it)."""
        padded, volume = plan.extents[0], plan.extents[-1]
        box = torch.empty(padded.depth, padded.height, padded.width, dtype=torch.float64)
        d, h, w = volume.d0 - padded.d0, volume.h0 - padded.h0, volume.w0 - padded.w0
        for part in (box[:d], box[d + volume.depth:], box[:, :h], box[:, h + volume.height:],
                     box[:, :, :w], box[:, :, w + volume.width:]):
            part.fill_(self.pad_int)
        caches = [box.view(-1, 1)]
        for i, layer in enumerate(self.layers):
            caches.append(torch.empty(plan.extents[i + 1].size, layer.weight.shape[1],
                                      dtype=torch.float64))
        return caches

    def coding_order(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """Flat (c, h, w) indices of the symbols in the order they are coded."""
        return self.plan(shape).coding_order

    def logits(self, symbols: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Integer logits (C*H*W, L) of a (C, H, W) symbol volume in coding order, in one
        parallel pass, in chunks of positions small enough for the gathered rows to stay in
        cache (1024: ~2.5x faster than 16384 on CPU)."""
        plan = self.plan(tuple(symbols.shape))
        caches = self._empty_caches(plan)
        slots = plan.input_slots(np.arange(plan.extents[-1].size))
        caches[0][slots, 0] = self.center_ints[symbols.reshape(-1).cpu()]
        for i in range(len(self.layers)):
            for start in range(0, plan.extents[i + 1].size, chunk):
                flat = np.arange(start, min(start + chunk, plan.extents[i + 1].size))
                self._compute(i, caches, plan.positions(i, flat))
        return caches[-1][plan.coding_order]

    def decode(self, shape: tuple[int, int, int], decode_step) -> torch.Tensor:
        """Decode a (C, H, W) volume step by step along the wavefront. `decode_step(logits)`
        gets the integer logits (m, L) of the step's symbols in coding order and returns their
        symbols (m,); an exception it raises stops the decode."""
        plan = self.plan(shape)
        size = _Ring.size(self.layers, self.reach)
        rings = [_Ring(self.layers, plan, i, size) for i in range(len(self.layers))]
        buffers = [torch.full((size * plan.extents[0].depth * plan.extents[0].height, 1),
                              self.pad_int, dtype=torch.float64)]
        for i, layer in enumerate(self.layers):
            extent = plan.extents[i + 1]
            buffers.append(torch.empty(size * extent.depth * extent.height,
                                       layer.weight.shape[1], dtype=torch.float64))
        symbols = torch.empty(plan.extents[-1].size, dtype=torch.int64)
        last = len(self.layers) - 1
        # planes[phase][i]: buffer i's plane of the steps t with t % size == phase.
        planes = list(zip(*(buffer.view(size, -1, buffer.shape[1]) for buffer in buffers),
                          strict=True))
        for t in plan.steps.tolist():
            phase = t % size
            # The input's plane of step t held step t - size, which no layer reads any more:
            # it becomes padding, and the step's symbols are written in once decoded.
            planes[phase][0].fill_(self.pad_int)
            for i, (layer, ring) in enumerate(zip(self.layers, rings, strict=True)):
                step = ring.step(t)
                if step is None:
                    continue
                rows, below, skip_rows = step
                neighbours = (below[:, None] + ring.taps[phase]).view(-1)
                gathered = buffers[i].index_select(0, neighbours).view(len(rows), -1)
                out = torch.addmm(layer.bias, gathered, layer.weight).floor_()
                if layer.skip_from is not None:
                    skip = planes[phase][layer.skip_from + 1]
                    out += skip.index_select(0, skip_rows)
                out.clamp_(0.0 if layer.relu else -ACT_LIMIT, ACT_LIMIT)
                if i < last:
                    planes[phase][i + 1].index_copy_(0, rows, out)
                    continue
                decoded = torch.as_tensor(decode_step(out), dtype=torch.int64)
                symbols[rows * plan.extents[-1].width + (t - ring.row_times[rows])] = decoded
                planes[phase][0][ring.input[rows], 0] = self.center_ints[decoded]
        return symbols.view(shape)


class _Ring:
    """The decoder's view of layer i. Each layer's output (and the padded input) is kept for
    the last `size` wavefront steps only, as planes of its (depth, height) rows: the position
    of row r at step t (w = t - the row's time at w = 0) lies in plane t % size, row r. Taps
    lie at most size - 1 steps back, so the buffers stay small and in cache, and a decode
    that stops early has touched little memory, however wide its image.

    step(t): layer i's rows computed at step t (in coding order for the last layer) and the
    rows below them in the layer below, or None; + taps[t % size]: the flat buffer indices of
    their taps. skip[r]: row r's skip row; input[r] (last layer): the padded input's row of
    its symbol; row_times[r]: its time at w = 0."""

    def __init__(self, layers: list[_Layer], plan: _Plan, i: int, size: int) -> None:
        layer, below, extent = layers[i], plan.extents[i], plan.extents[i + 1]
        a, b = _wavefront_coefficients(plan.reach)
        d, h = np.divmod(np.arange(extent.depth * extent.height), extent.height)
        d, h = d + extent.d0, h + extent.h0
        row_times = a * d + b * h
        self.row_times = torch.from_numpy(row_times)
        self.below = torch.from_numpy(_rows(below, d, h))
        od, oh, ow = layer.offsets.T
        lags = _wavefront_time(od, oh, ow, plan.reach)
        self.taps = [torch.from_numpy(od * below.height + oh + (phase + lags) % size
                                      * below.depth * below.height) for phase in range(size)]
        self.skip = None if layer.skip_from is None else torch.from_numpy(
            _rows(plan.extents[layer.skip_from + 1], d, h))
        self.last = i == len(layers) - 1
        if self.last:
            self.input = torch.from_numpy(_rows(plan.extents[0], d, h))
        # Rows of step t: those whose time at w = 0 lies in (t - w0 - width, t - w0].
        order = np.argsort(row_times, kind="stable")
        times = row_times[order]
        self._order = torch.from_numpy(order)
        self._below_in_order = self.below[self._order]
        self._skip_in_order = None if self.skip is None else self.skip[self._order]
        self._first = int(plan.steps[0])
        self._lo = np.searchsorted(times, plan.steps - extent.w0 - extent.width + 1).tolist()
        self._hi = np.searchsorted(times, plan.steps - extent.w0, side="right").tolist()

    @staticmethod
    def size(layers: list[_Layer], reach: int) -> int:
        """Steps the buffers keep: one more than the farthest tap back of any layer."""
        return 1 - min(int(_wavefront_time(*layer.offsets.T, reach).min())
                       for layer in layers)

    def step(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
        lo, hi = self._lo[t - self._first], self._hi[t - self._first]
        if lo == hi:
            return None
        if self.last:  # coding order: by flat index, i.e. by row
            rows = torch.sort(self._order[lo:hi]).values
            return rows, self.below[rows], None if self.skip is None else self.skip[rows]
        return (self._order[lo:hi], self._below_in_order[lo:hi],
                None if self.skip is None else self._skip_in_order[lo:hi])


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
