"""Compressed-file speed on one Kodak image with a cvpr/med-sized model.

    python bench/coding_speed.py [--image kodim01.png] [--model JOB_DIR] [--threads N]

Random weights unless --model names a trained job's log dir. Kodak is read from $KODAK_DIR
(default ../shared/data/kodak). Prints encode and decode seconds split into network and
entropy-coding time, and real (header included) vs estimated (float cross-entropy) bpp.
Last line: encode_s=X decode_s=Y real_over_estimated=Z
"""

import argparse
import os
import time
from pathlib import Path

import torch

from imgcomp import coding
from imgcomp.bitstream import unpack
from imgcomp.checkpoint import load_codec
from imgcomp.config import load_config
from imgcomp.imageio import read_image
from imgcomp.model import ImageCodec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="kodim01.png")
    parser.add_argument("--model", help="log dir of a trained job (default: random cvpr/med)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kodak = Path(os.environ.get("KODAK_DIR", ROOT.parent / "shared/data/kodak"))
    image = read_image(kodak / args.image)
    h, w = image.shape[:2]
    if args.model:
        model = load_codec(Path(args.model) / "ckpts")
    else:
        torch.manual_seed(0)
        model = ImageCodec.from_configs(load_config(ROOT / "ae_configs/cvpr/med"),
                                        load_config(ROOT / "pc_configs/cvpr/res_shallow"))
        model.autoencoder.to(memory_format=torch.channels_last)
        model.eval()
    print(f"{args.image} {w}x{h}, {'trained ' + args.model if args.model else 'random'} "
          f"cvpr/med-sized model, {args.threads} threads")
    model.decompress(model.compress(image[:64, :64]))  # warm-up

    # Encode: image -> file.
    start = time.perf_counter()
    symbols = model.symbols(image)
    t_net = time.perf_counter()
    data, theory_bits = model.encode_symbols(symbols, h, w)
    t_end = time.perf_counter()
    encode_s = t_end - start
    print(f"encode: {encode_s:.2f} s = autoencoder {t_net - start:.2f} s + context model and "
          f"range coding {t_end - t_net:.2f} s ({symbols.numel()} symbols)")

    # Decode: file -> image, timing the range decoder inside the wavefront separately.
    coder_time = 0.0
    real_probabilities = coding.probabilities

    def timed_probabilities(logits):
        nonlocal coder_time
        t = time.perf_counter()
        result = real_probabilities(logits)
        coder_time += time.perf_counter() - t
        return result

    coding.probabilities = timed_probabilities
    start = time.perf_counter()
    header, decoded = model.decode_symbols(data)
    t_symbols = time.perf_counter()
    model.reconstruct(decoded, h, w)
    t_end = time.perf_counter()
    coding.probabilities = real_probabilities
    decode_s = t_end - start
    steps = len(model.coder()[1].plan(tuple(symbols.shape)).steps)
    print(f"decode: {decode_s:.2f} s = context model wavefront {t_symbols - start - coder_time:.2f}"
          f" s ({steps} steps) + probability tables {coder_time:.2f} s (range decoding "
          f"included in the wavefront) + autoencoder {t_end - t_symbols:.2f} s")
    assert torch.equal(decoded, symbols), "decoded symbols differ"
    unpack(data)

    float_bits = model.bits(symbols)
    real_bpp, est_bpp = 8 * len(data) / (h * w), float_bits / (h * w)
    print(f"bpp: real {real_bpp:.4f} (file {len(data)} bytes), integer-model cross-entropy "
          f"{theory_bits / (h * w):.4f}, float cross-entropy (estimate) {est_bpp:.4f}")
    print(f"encode_s={encode_s:.2f} decode_s={decode_s:.2f} "
          f"real_over_estimated={real_bpp / est_bpp:.4f}")


if __name__ == "__main__":
    main()
