"""Range coding of a symbol volume with constriction, under the integer model's probabilities.

Hostile payloads: decoding stops with BitstreamError as soon as the symbols decoded carry more
information than the payload can hold (_PayloadReader). The decoder's index arrays and caches
grow with the image's rows (C x H), not its pixels, so a payload that runs out early costs
little, however large an image its header claims.
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

from imgcomp.entropy_coding.bitstream import BitstreamError
from imgcomp.entropy_coding.integer_model import IntegerContextModel, probabilities

_CATEGORICAL = constriction.stream.model.Categorical(perfect=False)


# Volumes whose one-pass encode (IntegerContextModel.logits: all logits at once, ~1.3x as fast
# as the wavefront on a Kodak image) takes at most this much memory are encoded so, larger
# ones along the wavefront, as they are decoded, in memory that grows with the rows (C x H).
ONE_PASS_BYTES = 1 << 27  # med: a Kodak image 30 MB, 1536 x 1024 118 MB, 3072 x 2048 470 MB
_CHUNK = 1 << 16  # symbols whose probabilities are made at once in a one-pass encode


def encode_symbols(model: IntegerContextModel, symbols: torch.Tensor,
                   one_pass_bytes: int = ONE_PASS_BYTES) -> tuple[np.ndarray, float]:
    """Range-code a (C, H, W) int volume. Returns the compressed uint32 words and the
    cross-entropy in bits of the symbols under the (integer) probabilities used."""
    encoder = constriction.stream.queue.RangeEncoder()
    bits = 0.0

    def code(logits: torch.Tensor, chosen: np.ndarray) -> np.ndarray:
        nonlocal bits
        chosen = chosen.astype(np.int32)
        probs = probabilities(logits)
        encoder.encode(chosen, _CATEGORICAL, probs)
        bits -= float(np.log2(probs[np.arange(len(chosen)), chosen]).sum())
        return chosen

    shape = tuple(symbols.shape)
    flat = symbols.cpu().reshape(-1).numpy()
    if model.one_pass_bytes(shape) <= one_pass_bytes:
        logits = model.logits(symbols)
        ordered = flat[model.coding_order(shape).numpy()]
        for start in range(0, len(ordered), _CHUNK):
            code(logits[start:start + _CHUNK], ordered[start:start + _CHUNK])
    else:
        model.walk(shape, lambda logits, positions: code(logits, flat[positions.numpy()]))
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
