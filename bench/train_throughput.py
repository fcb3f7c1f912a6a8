"""Training throughput (images/s of full train steps: forward, MS-SSIM/loss, backward, both
optimizers) and peak memory at each config's own crop size and batch size, on random images.

    python bench/train_throughput.py [--steps 3] [--threads N] [--case cvpr_med] [--batch B]

Each case runs in a child process of its own, so its peak RSS (which never decreases within
a process) is that case's alone: model, optimizer states, one warm-up step and the timed ones.
Last line: cvpr_med_img_s=X cvpr_med_peak_rss_gb=M ... for each case run.
"""

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from imgcomp.config import load_config
from imgcomp.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "cvpr_med": ("ae_configs/cvpr/med", "pc_configs/cvpr/res_shallow"),
    "cpu_med": ("ae_configs/cpu/med", "pc_configs/cpu/res_shallow"),
    "gpu_med": ("ae_configs/gpu/med", "pc_configs/gpu/res_shallow"),
}


def measure(case: str, steps: int, batch: int | None) -> None:
    """Child process: time `steps` train steps after one warm-up step; print img/s."""
    ae_path, pc_path = CASES[case]
    ae_cfg, pc_cfg = load_config(ROOT / ae_path), load_config(ROOT / pc_path)
    trainer = Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=1000)
    h, w = ae_cfg.crop_size
    batch = batch or ae_cfg.batch_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch, 3, h, w, generator=gen) * 255 for _ in range(steps + 1)]
    trainer.train_step(batches[0])  # warm-up: allocator, kernel selection
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for x in batches[1:]:
        trainer.train_step(x)
    seconds = time.perf_counter() - start
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{ae_path} + {pc_path}: crop {h}x{w}, batch {batch}, {params:,} parameters: "
          f"{seconds / steps:.2f} s/step, {steps * batch / seconds:.2f} img/s, {faults:,.0f} "
          f"page faults/step, heap released {trainer.heap.releases} time(s)", flush=True)
    print(f"img_s={steps * batch / seconds}", flush=True)


def run_case(case: str, args: argparse.Namespace) -> tuple[float, float]:
    """(img/s, peak RSS in GB) of `case` measured in a child process of its own."""
    cmd = [sys.executable, __file__, "--child", case, "--steps", str(args.steps),
           "--threads", str(args.threads)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    img_s = float("nan")
    for line in child.stdout:
        if line.startswith("img_s="):
            img_s = float(line.split("=", 1)[1])
        else:
            print(line, end="", flush=True)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"case {case} failed")
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    print(f"  peak RSS {peak_gb:.2f} GB", flush=True)
    return img_s, peak_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--case", choices=sorted(CASES), action="append",
                        help="run only this case (repeatable); default: all")
    parser.add_argument("--batch", type=int, help="batch size instead of the config's")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        measure(args.child, args.steps, args.batch)
        return
    print(f"torch {torch.__version__}, {args.threads} threads")
    results = {case: run_case(case, args) for case in args.case or CASES}
    print(" ".join(f"{case}_img_s={img_s:.2f} {case}_peak_rss_gb={gb:.2f}"
                   for case, (img_s, gb) in results.items()))


if __name__ == "__main__":
    main()
