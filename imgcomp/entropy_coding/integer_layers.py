"""The context model's masked convolutions as fixed-point integer layers, exact in float64.

Exactness: the decoder must compute bit-identical probabilities to the encoder, whatever the
thread count, batch shape, kernel choice or device. Floating-point convolutions do not give
that, so for coding the context model is evaluated as an *integer network* (Balle et al.,
"Integer Networks for Data Compression with Latent-Variable Models", ICLR 2019): weights,
biases, inputs and activations are fixed-point integers, stored in float64 tensors whose
every partial sum stays below 2^53, so any summation order gives the exact same integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imgcomp.nets.probclass import ContextLayer, causal_mask

ACT_FRAC_BITS = 16  # activations and logits are multiples of 2^-16
WEIGHT_BITS = 15  # |integer weight| <= 2^15
ACT_LIMIT = 2.0**26  # activations clamped to +-2^26 / 2^16 = +-1024
# |sum| <= taps*Cin * 2^15 * 2^26: below 2^53 (exact in float64) for taps*Cin < 2^12, e.g.
# 14 taps x k = 64 for 3x3 kernels; integer_layer checks it.
_EXACT_SUM = 2.0**53


@dataclass
class IntegerLayer:
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


def integer_layer(layer: ContextLayer) -> IntegerLayer:
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
    return IntegerLayer(layer.name, w_fixed, b_fixed, offsets, conv.reach, layer.relu,
                  layer.skip_from)
