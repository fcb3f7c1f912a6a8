"""Training throughput (images/s of full train steps: forward, MS-SSIM/loss, backward, both
optimizers) and peak memory at each config's own crop size and batch size, on random images.

    python bench/train_throughput.py [--steps 3] [--threads N] [--case cvpr_med] [--batch B]
                                     [--bf16]

Each case runs in a child process of its own, so its peak RSS (which never decreases within
a process) is that case's alone: model, optimizer states, one warm-up step and the timed ones.
Each also prints the page faults per timed step and, from a forward pass in another process,
the activation memory kept for the backward pass by each part of the model.
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

from imgcomp.config.parsing import load_config
from imgcomp.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "cvpr_med": ("ae_configs/cvpr/med", "pc_configs/cvpr/res_shallow"),
    "cpu_med": ("ae_configs/cpu/med", "pc_configs/cpu/res_shallow"),
    "gpu_med": ("ae_configs/gpu/med", "pc_configs/gpu/res_shallow"),
}


def saved_for_backward(trainer: Trainer, x: torch.Tensor) -> dict[str, int]:
    """Bytes that a train step's forward and loss keep for the backward pass, by the part that
    saved them (each storage counted once, for its first saver): where activation memory goes."""
    model = trainer.model
    parts = {"encoder": model.autoencoder.encoder, "decoder": model.autoencoder.decoder,
             "quantizer": model.quantizer, "context model": model.probclass}
    current = ["loss (MS-SSIM) and the rest"]
    owner: dict[int, tuple[str, int]] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        owner.setdefault(storage.data_ptr(), (current[-1], storage.nbytes()))
        return tensor

    def leave(*_) -> None:  # a forward hook returning a value would replace the output
        current.pop()

    handles = []
    for name, module in parts.items():
        handles.append(module.register_forward_pre_hook(
            lambda *_, name=name: current.append(name)))
        handles.append(module.register_forward_hook(leave))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.training_loss(x)
    for handle in handles:
        handle.remove()
    totals = dict.fromkeys([*parts, current[0]], 0)
    for name, nbytes in owner.values():
        totals[name] += nbytes
    return totals


def measure(case: str, steps: int, batch: int | None, saved_only: bool, bf16: bool) -> None:
    """Child process: time `steps` train steps after one warm-up step and print img/s, or
    (`saved_only`, in a process of its own: a forward pass without its backward would
    leave the heap laid out differently for the steps) print the memory kept for backward."""
    ae_path, pc_path = CASES[case]
    ae_cfg, pc_cfg = load_config(ROOT / ae_path), load_config(ROOT / pc_path)
    trainer = Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=1000, bf16=bf16)
    h, w = ae_cfg.crop_size
    batch = batch or ae_cfg.batch_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(batch, 3, h, w, generator=gen) * 255
               for _ in range(1 if saved_only else steps + 1)]
    if saved_only:
        saved = saved_for_backward(trainer, batches[0])
        print(f"  kept for the backward pass: {sum(saved.values()) / 1e9:.2f} GB = "
              + " + ".join(f"{name} {nbytes / 1e9:.2f}" for name, nbytes in saved.items()))
        return
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
    if args.bf16:
        cmd.append("--bf16")
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
    subprocess.run([*cmd, "--saved"], check=True)
    return img_s, peak_gb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--case", choices=sorted(CASES), action="append",
                        help="run only this case (repeatable); default: all")
    parser.add_argument("--batch", type=int, help="batch size instead of the config's")
    parser.add_argument("--bf16", action="store_true", help="train.py --bf16's autocast")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--saved", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        measure(args.child, args.steps, args.batch, args.saved, args.bf16)
        return
    print(f"torch {torch.__version__}, {args.threads} threads{', bf16' if args.bf16 else ''}")
    results = {case: run_case(case, args) for case in args.case or CASES}
    print(" ".join(f"{case}_img_s={img_s:.2f} {case}_peak_rss_gb={gb:.2f}"
                   for case, (img_s, gb) in results.items()))


if __name__ == "__main__":
    main()
