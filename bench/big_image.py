"""Peak memory and wall time of a large photo (default 3072 x 2048) through `imgcomp encode`,
`imgcomp decode` and `val.py --real_bpp`, with the default shipped model, on the CPU.

    python bench/big_image.py [--image kodim01.png] [--size 3072x2048] [--work /tmp/imgcomp_big]
                              [--no_val]

The photo is a Kodak image ($KODAK_DIR, default ../shared/data/kodak) resized with Lanczos and
written under --work (never into the repository), as are the compressed file, the decoded
image and val.py's outputs (its log dir root holds a link to the shipped job). Each command
runs alone in a subprocess; its peak RSS comes from os.wait4 (that child only). Run it with
nothing else heavy on the machine. Last line: one `name: wall_s=X peak_rss_gb=Y` per command.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcomp.api import DEFAULT_JOB, default_model_dir
from imgcomp.evaluation.results import RECONSTRUCTIONS_DIR, results_dir

ROOT = Path(__file__).resolve().parents[1]


def run(name: str, argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of one command; exits if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name} failed:\n{output}")
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    print(f"{name}: {wall:.1f} s, peak RSS {peak_gb:.2f} GB  ({output.strip().splitlines()[-1]})")
    return wall, peak_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="kodim01.png")
    parser.add_argument("--size", default="3072x2048", help="W x H")
    parser.add_argument("--work", default="/tmp/imgcomp_big")
    parser.add_argument("--no_val", action="store_true",
                        help="encode and decode only: val.py's MS-SSIM holds the whole image "
                        "(~325 bytes per pixel), too much for the largest sizes")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    kodak = Path(os.environ.get("KODAK_DIR", ROOT.parent / "shared/data/kodak"))
    work = Path(args.work)
    images = work / "big"  # val.py's dataset name: this photo alone (val.py measures them all)
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir(parents=True)
    photo = images / f"{Path(args.image).stem}_{width}x{height}.png"
    Image.MAX_IMAGE_PIXELS = None  # our own photo, however large
    with Image.open(kodak / args.image) as img:
        img.convert("RGB").resize((width, height), Image.Resampling.LANCZOS).save(photo)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    job = logs / default_model_dir().name
    if not job.exists():
        job.symlink_to(default_model_dir(), target_is_directory=True)

    env_note = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    print(f"{photo} ({width}x{height}), model {DEFAULT_JOB}, CPU, {env_note}")
    stream, decoded = work / "big.imgc", work / "big_decoded.png"
    py = sys.executable
    results = {
        "encode": run("encode", [py, "-m", "imgcomp", "encode", str(photo), "-o", str(stream)]),
        "decode": run("decode", [py, "-m", "imgcomp", "decode", str(stream), "-o",
                                 str(decoded)]),
    }
    with Image.open(decoded) as img:
        assert img.size == (width, height)
    if not args.no_val:
        results["val_real_bpp"] = run("val --real_bpp", [
            py, "val.py", str(logs), DEFAULT_JOB, str(images), "--real_bpp", "--save_ours",
            "--reset", "--ckpt_step", "-1", "--device", "cpu"])
        check_val(logs, photo, stream, decoded)
    print("  ".join(f"{name}: wall_s={wall:.1f} peak_rss_gb={gb:.2f}"
                    for name, (wall, gb) in results.items()))


def check_val(logs: Path, photo: Path, stream: Path, decoded: Path) -> None:
    """val.py wrote the same file as `imgcomp encode` and reconstructs as `imgcomp decode`."""
    val_stream = logs / f"{DEFAULT_JOB} big" / "bitstreams" / f"{photo.stem}.imgc"
    assert val_stream.read_bytes() == stream.read_bytes(), "val.py and imgcomp encode differ"
    saved = results_dir(logs, DEFAULT_JOB, "big") / RECONSTRUCTIONS_DIR / f"{photo.stem}.png"
    assert np.array_equal(np.asarray(Image.open(decoded)), np.asarray(Image.open(saved))), (
        "imgcomp decode and val.py reconstruct differently")


if __name__ == "__main__":
    main()
