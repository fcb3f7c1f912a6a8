"""Real file sizes and decode times of models that share an autoencoder and differ in their
context model (as `imgcomp train-context` makes them), on the same symbols.

    python bench/context_rates.py MODEL MODEL... --images SET... [--how_many N] [--csv FILE]

MODEL: a shipped name or a log dir (the first is the baseline); SET: a folder of images or a
quoted glob. Each image's symbols are computed once; each model encodes them to
a real file (header included) and decodes it (symbols, then the image), checked identical to
the baseline's: the reconstructions, hence MS-SSIM and PSNR, are the same, and the BD-rate at
identical distortion is the ratio of the rates. The models take turns going first, so a
shared machine's load falls on all alike. Prints per set the mean real bpp, its ratio to the
baseline's, and the total decode seconds.
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imgcomp.base.image_files import read_image, resolve_image_paths
from imgcomp.checkpoints import zoo


def _same_autoencoder(a, b) -> bool:
    state_a, state_b = a.state_dict(), b.state_dict()
    return all(torch.equal(t, state_b[n]) for n, t in state_a.items()
               if not n.startswith("probclass."))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--how_many", type=int, help="only the first N images of each set")
    p.add_argument("--csv", type=Path, help="per-image rows written here")
    args = p.parse_args()
    models = [zoo.load_model(m) for m in args.models]
    for name, model in zip(args.models[1:], models[1:], strict=True):
        if not _same_autoencoder(models[0], model):
            raise SystemExit(f"{name}: not the autoencoder and quantizer of {args.models[0]}")
    rows = []
    for spec in args.images:
        paths = resolve_image_paths(spec)[:args.how_many]
        for i, path in enumerate(tqdm(paths, desc=spec, leave=False)):
            image = read_image(path)
            h, w = image.shape[:2]
            symbols = models[0].symbols(image)
            reference = None
            order = np.roll(np.arange(len(models)), i)  # who goes first takes turns
            row = {"set": spec, "img_name": path.name}
            for m in order:
                data = models[m].encode_symbols(symbols, h, w)[0]
                start = time.perf_counter()
                header, decoded = models[m].decode_symbols(data, max_pixels=h * w)
                x_hat = models[m].reconstruct(decoded, h, w)
                row[f"decode_s_{m}"] = time.perf_counter() - start
                row[f"bpp_real_{m}"] = 8 * len(data) / (h * w)
                if not torch.equal(decoded, symbols):
                    raise SystemExit(f"{path}: {args.models[m]} decodes other symbols")
                if reference is not None and not np.array_equal(x_hat, reference):
                    raise SystemExit(f"{path}: {args.models[m]} reconstructs another image")
                reference = x_hat
            rows.append(row)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(f"threads {torch.get_num_threads()}; models: "
          + ", ".join(f"{m}={name}" for m, name in enumerate(args.models)))
    for spec in args.images:
        part = [r for r in rows if r["set"] == spec]
        for m, name in enumerate(args.models):
            bpp = np.mean([r[f"bpp_real_{m}"] for r in part])
            base = np.mean([r["bpp_real_0"] for r in part])
            decode = sum(r[f"decode_s_{m}"] for r in part)
            base_decode = sum(r["decode_s_0"] for r in part)
            print(f"{spec} ({len(part)} images) {name}: bpp_real {bpp:.4f} "
                  f"({100 * (bpp / base - 1):+.2f} %), decode {decode:.1f} s "
                  f"({decode / base_decode:.2f}x)")


if __name__ == "__main__":
    main()
