"""Training throughput (images/s of full train steps: forward, MS-SSIM/loss, backward, both
optimizers) at each config's own crop size and batch size, on random images.

    python bench/train_throughput.py [--steps 3] [--threads N]

Last line: cvpr_med_img_s=X cpu_med_img_s=Y gpu_med_img_s=Z
"""

import argparse
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


def measure(ae_path: str, pc_path: str, steps: int) -> float:
    ae_cfg, pc_cfg = load_config(ROOT / ae_path), load_config(ROOT / pc_path)
    trainer = Trainer(ae_cfg, pc_cfg, torch.device("cpu"), num_train_images=1000)
    h, w = ae_cfg.crop_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(ae_cfg.batch_size, 3, h, w, generator=gen) * 255
               for _ in range(steps + 1)]
    trainer.train_step(batches[0])  # warm-up: allocator, kernel selection
    start = time.perf_counter()
    for x in batches[1:]:
        trainer.train_step(x)
    img_s = steps * ae_cfg.batch_size / (time.perf_counter() - start)
    params = sum(p.numel() for p in trainer.model.parameters())
    print(f"{ae_path} + {pc_path}: crop {h}x{w}, batch {ae_cfg.batch_size}, "
          f"{params:,} parameters: {img_s:.2f} img/s", flush=True)
    return img_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    results = {name: measure(ae, pc, args.steps) for name, (ae, pc) in CASES.items()}
    print(" ".join(f"{name}_img_s={v:.2f}" for name, v in results.items()))


if __name__ == "__main__":
    main()
