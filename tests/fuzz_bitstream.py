"""Adversarial fuzzing of compressed files: N CRC-valid mutations of real files.

    python tests/fuzz_bitstream.py N [--seed S] [--model JOB_DIR]

The files are 96 x 64 crops of the bundled sample photos compressed by the default shipped
model (or --model); the mutations are tests/bitstream_mutations.py's (payload bit flips,
truncation and extension with the length field fixed, image sizes and channels changed,
random header bytes, each with its CRC recomputed). Mutation i is reproducible alone: it is
made with numpy.random.default_rng([S, i]) from file i % 3. Prints the outcomes by mutation
kind, the slowest decodes and every mutation whose outcome is neither an image of the size
its header claims nor a BitstreamError. Last line:
images=X bitstream_errors=Y other_exceptions=Z over_5s=W wrong_size=V wall_s=T
"""

import argparse
import collections
import time

import numpy as np
from bitstream_mutations import base_files, decode_outcome, mutate  # tests/, beside this script

from imgcomp.api import default_model_dir, load_model

SLOW_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of mutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="log dir of a trained job (default: the shipped one)")
    args = parser.parse_args()
    model = load_model(args.model or default_model_dir())
    files = base_files(model)
    start = time.perf_counter()
    by_kind = collections.defaultdict(collections.Counter)
    totals = collections.Counter()
    slowest, odd = [], []
    for i in range(args.n):
        kind, data = mutate(files[i % len(files)], np.random.default_rng([args.seed, i]))
        outcome, seconds = decode_outcome(model, data)
        by_kind[kind][outcome] += 1
        group = ("images" if outcome == "image" else
                 "bitstream_errors" if outcome.startswith("BitstreamError") else
                 "wrong_size" if outcome == "image of another size" else "other_exceptions")
        totals[group] += 1
        totals["over_5s"] += seconds > SLOW_S
        slowest = sorted([*slowest, (seconds, i, kind, outcome)], reverse=True)[:5]
        if group in ("wrong_size", "other_exceptions") or seconds > SLOW_S:
            odd.append((i, kind, outcome, seconds))
    wall = time.perf_counter() - start
    for kind, outcomes in sorted(by_kind.items()):
        print(f"{kind} ({sum(outcomes.values())}):")
        for outcome, count in outcomes.most_common():
            print(f"  {count:6d}  {outcome}")
    print("slowest decodes:", ", ".join(f"#{i} {kind} {s:.2f} s ({outcome})"
                                        for s, i, kind, outcome in slowest))
    for i, kind, outcome, seconds in odd:
        print(f"ODD #{i} (seed {args.seed}) {kind}: {outcome} in {seconds:.2f} s")
    print(" ".join(f"{key}={totals[key]}" for key in ("images", "bitstream_errors",
                                                     "other_exceptions", "over_5s",
                                                     "wrong_size")) + f" wall_s={wall:.0f}")


if __name__ == "__main__":
    main()
