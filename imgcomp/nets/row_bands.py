"""Transposed convolutions whose results do not depend on the thread count: inside
`thread_count_independent()`, every transposed convolution of the autoencoder
(`conv_transpose2d`) is computed in bands of output rows, each band by one thread running a
one-thread oneDNN primitive, the bands shared by the calling thread and
torch.get_num_threads() - 1 helper threads.

Why: oneDNN runs a transposed convolution as the backward-data pass of a convolution and
chooses its blocking, and with it the order in which it sums products, by the thread count
(the shipped decoders' three transposed convolutions gave different bits at 4 threads than
at 1), so the same file decoded to pixels one level apart under OMP_NUM_THREADS=1 and 2. A
band's primitive always runs on one thread and the bands are fixed by the shapes alone, so
every output is summed in the same order whatever the thread count. Forward convolutions
(the residual trunk, ~90 % of the decoder's work) do not split their sums by thread: they
gave identical bits at 1, 2 and 4 threads, layer by layer, and run as usual, as do the
elementwise layers (BatchNorm in eval mode, ReLU, additions). Banding them too cost +55 %
decode time at 2 threads; banding the transposed ones costs ~+9 % (docs/performance.md).
tests/test_tiling.py checks decoded pixels at 1, 2 and 4 threads. On CUDA the convolutions
run as usual.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from imgcomp.base.threads import intra_op_threads

BANDS_PER_CONV = 8  # at most; more bands keep more threads busy, and cost more per row
MIN_BAND_WORK = 1 << 25  # multiply-adds: a band's primitive call costs ~0.1 ms more than that

# The helper threads of the thread_count_independent() block running in this context, if any
# (the calling thread computes bands too): (pool, number of helpers), or (None, 0).
_NOT_BANDED = object()
_helpers: contextvars.ContextVar = contextvars.ContextVar("row_bands", default=_NOT_BANDED)


@functools.lru_cache(maxsize=1)
def _pool(helpers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(helpers, thread_name_prefix="row_bands")


@contextlib.contextmanager
def thread_count_independent() -> Iterator[None]:
    """Compute the convolutions called in this block (in this thread) in row bands of one
    thread each, on torch.get_num_threads() threads: the same bits for any thread count."""
    threads = torch.get_num_threads()
    token = _helpers.set((_pool(threads - 1), threads - 1) if threads > 1 else (None, 0))
    try:
        yield
    finally:
        _helpers.reset(token)
        # A helper's torch.set_num_threads(1) also set the count that threads started later
        # begin with: restore it (and this thread's own).
        torch.set_num_threads(threads)


def _bands(rows: int, work_per_row: int) -> list[tuple[int, int]]:
    """[start, stop) of each band of `rows` output rows: fixed by the shape alone."""
    step = max(-(-rows // BANDS_PER_CONV), -(-MIN_BAND_WORK // max(work_per_row, 1)))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _drain(band: Callable[[int, int], Tensor], bounds: list[tuple[int, int]],
           out: Tensor | None, pending: Iterator[int], lock: threading.Lock,
           grad: bool) -> Tensor | None:
    """Compute bands on this thread, with one OpenMP (so oneDNN) thread and the caller's
    grad mode (which is per thread), until none is left, each written into its rows of
    `out`; without `out` (one band), return the band."""
    with intra_op_threads(1), torch.set_grad_enabled(grad):
        if out is None:
            return band(*bounds[0])
        while True:
            with lock:
                i = next(pending, None)
            if i is None:
                return None
            start, stop = bounds[i]
            out[:, :, start:stop] = band(start, stop)


def _banded(band: Callable[[int, int], Tensor], x: Tensor, shape: tuple[int, int, int, int],
            work_per_row: int) -> Tensor:
    """The output of `shape` (N, C, rows, columns) computed band by band, in the memory
    format of the input x."""
    bounds = _bands(shape[2], work_per_row)
    pending, lock = iter(range(len(bounds))), threading.Lock()
    if len(bounds) == 1:
        return _drain(band, bounds, None, pending, lock, torch.is_grad_enabled())
    layout = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
              else torch.contiguous_format)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout)
    pool, helpers = _helpers.get()
    grad = torch.is_grad_enabled()
    started = [pool.submit(_drain, band, bounds, out, pending, lock, grad)
               for _ in range(min(helpers, len(bounds) - 1))]
    _drain(band, bounds, out, pending, lock, grad)
    for helper in started:
        helper.result()
    return out


def _active(x: Tensor) -> bool:
    return _helpers.get() is not _NOT_BANDED and x.device.type == "cpu"


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                     padding: tuple[int, int], output_padding: tuple[int, int],
                     rows: int) -> Tensor:
    """The first `rows` output rows of F.conv_transpose2d (zero padding), in row bands inside
    thread_count_independent(). Output row o is row o + padding of the full transposed
    convolution, to which input row i contributes rows i * stride .. i * stride + kernel - 1;
    rows beyond the full convolution (output_padding > padding) are not supported."""
    (sh, sw), (ph, pw), (kh, kw) = stride, padding, weight.shape[2:]
    if not _active(x):
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding)[:, :, :rows]
    n = x.shape[2]
    if rows + ph > (n - 1) * sh + kh:
        raise ValueError(f"{rows} rows of a transposed convolution of {n} rows (kernel {kh}, "
                         f"stride {sh}, padding {ph}) lie beyond its full output")

    def band(start: int, stop: int) -> Tensor:
        first = max(0, -(-(start + ph - kh + 1) // sh))
        last = min(n, (stop - 1 + ph) // sh + 1)
        full = F.conv_transpose2d(x[:, :, first:last], weight, bias, stride, (0, pw),
                                  (0, output_padding[1]))
        offset = start + ph - first * sh
        return full[:, :, offset:offset + stop - start]

    width = (x.shape[3] - 1) * sw - 2 * pw + kw + output_padding[1]
    return _banded(band, x, (x.shape[0], weight.shape[1], rows, width),
                   width * weight.numel() // (sh * sw))
