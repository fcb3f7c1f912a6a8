"""Compressed-file speed on one Kodak image with a cvpr/med-sized model.

    python bench/coding_speed.py [--image kodim01.png] [--model JOB_DIR] [--threads N]
                                 [--repeat 5]

Random weights unless --model names a trained job's log dir. Kodak is read from $KODAK_DIR
(default ../shared/data/kodak). Prints encode and decode seconds split into network and
entropy-coding time (the median of --repeat runs, each run's total listed: shared machines
vary by tens of percent from minute to minute), and real (header included) vs estimated
(float cross-entropy) bpp. Last line: encode_s=X decode_s=Y real_over_estimated=Z
"""

import argparse
import os
import time
from pathlib import Path

import torch

from imgcomp.base.image_files import read_image
from imgcomp.checkpoints.log_dirs import load_codec
from imgcomp.codec.image_codec import ImageCodec
from imgcomp.config.parsing import load_config
from imgcomp.entropy_coding import range_coding
from imgcomp.entropy_coding.bitstream import unpack

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="kodim01.png")
    parser.add_argument("--model", help="log dir of a trained job (default: random cvpr/med)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=5,
                        help="runs of encode and decode; the median run is reported")
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
          f"cvpr/med-sized model, {args.threads} threads, median of {args.repeat} runs")
    model.decompress(model.compress(image[:64, :64]))  # warm-up

    encodes = sorted((encode(model, image) for _ in range(args.repeat)), key=lambda run: run[0])
    encode_s, net_s, coding_s, symbols, data, theory_bits = encodes[len(encodes) // 2]
    print(f"encode: {encode_s:.2f} s = autoencoder {net_s:.2f} s + context model and range "
          f"coding {coding_s:.2f} s ({symbols.numel()} symbols); all runs: "
          f"{' '.join(f'{run[0]:.2f}' for run in encodes)}")

    decodes = sorted((decode(model, data, symbols, h, w) for _ in range(args.repeat)),
                     key=lambda run: run[0])
    decode_s, wavefront_s, tables_s, net_s = decodes[len(decodes) // 2]
    steps = len(model.coder()[1].plan(tuple(symbols.shape)).steps)
    print(f"decode: {decode_s:.2f} s = context model wavefront {wavefront_s:.2f} s ({steps} "
          f"steps) + probability tables {tables_s:.2f} s (range decoding included in the "
          f"wavefront) + autoencoder {net_s:.2f} s; all runs: "
          f"{' '.join(f'{run[0]:.2f}' for run in decodes)}; wavefront: "
          f"{' '.join(f'{s:.2f}' for s in sorted(run[1] for run in decodes))}")
    unpack(data)

    float_bits = model.bits(symbols)
    real_bpp, est_bpp = 8 * len(data) / (h * w), float_bits / (h * w)
    print(f"bpp: real {real_bpp:.4f} (file {len(data)} bytes), integer-model cross-entropy "
          f"{theory_bits / (h * w):.4f}, float cross-entropy (estimate) {est_bpp:.4f}")
    print(f"encode_s={encode_s:.2f} decode_s={decode_s:.2f} "
          f"real_over_estimated={real_bpp / est_bpp:.4f}")


def encode(model: ImageCodec, image) -> tuple:
    """Image -> file: (total s, autoencoder s, coding s, symbols, file, coded bits)."""
    start = time.perf_counter()
    symbols = model.symbols(image)
    t_net = time.perf_counter()
    data, theory_bits = model.encode_symbols(symbols, *image.shape[:2])
    t_end = time.perf_counter()
    return t_end - start, t_net - start, t_end - t_net, symbols, data, theory_bits


def decode(model: ImageCodec, data: bytes, symbols: torch.Tensor, h: int, w: int
           ) -> tuple[float, float, float, float]:
    """File -> image: (total s, wavefront s, probability tables s, autoencoder s), timing the
    probability tables inside the wavefront separately."""
    tables_s = 0.0
    real_probabilities = range_coding.probabilities

    def timed_probabilities(logits):
        nonlocal tables_s
        t = time.perf_counter()
        result = real_probabilities(logits)
        tables_s += time.perf_counter() - t
        return result

    range_coding.probabilities = timed_probabilities
    try:
        start = time.perf_counter()
        _, decoded = model.decode_symbols(data)
        t_symbols = time.perf_counter()
        model.reconstruct(decoded, h, w)
        t_end = time.perf_counter()
    finally:
        range_coding.probabilities = real_probabilities
    assert torch.equal(decoded, symbols), "decoded symbols differ"
    return t_end - start, t_symbols - start - tables_s, tables_s, t_end - t_symbols


if __name__ == "__main__":
    main()
