"""Run by tests/test_distributed.py under torchrun: a few DDP training steps, then each rank
writes what it saw (batch checksums) and its final parameters' checksum to OUT/rank<R>.json."""

import json
import sys

import torch

from imgcomp.base.distributed import close_world, init_world
from imgcomp.config.parsing import load_config
from imgcomp.data.loaders import make_loader
from imgcomp.train.loop import batches_forever
from imgcomp.train.trainer import Trainer


def main(ae_config: str, pc_config: str, dataset: str, out_dir: str) -> None:
    world, device = init_world(torch.device("cpu"))
    torch.manual_seed(world.rank)  # different init per rank: DDP must broadcast rank 0's
    ae_cfg, pc_cfg = load_config(ae_config), load_config(pc_config)
    loader, num_images = make_loader(dataset, ae_cfg.crop_size, ae_cfg.batch_size, train=True,
                                     num_workers=0, rank=world.rank,
                                     world_size=world.world_size)
    trainer = Trainer(ae_cfg, pc_cfg, device, num_images, world)
    batches = []
    for step, x in enumerate(batches_forever(loader)):  # several epochs
        if step == 3:
            break
        batches.append(float(x.double().sum()))
        assert trainer.train_step(x) is not None
    params = [float(p.double().sum()) for p in trainer.model.parameters()]
    buffers = [float(b.double().sum()) for b in trainer.model.buffers()]
    with open(f"{out_dir}/rank{world.rank}.json", "w") as f:
        json.dump({"batches": batches, "params": params, "buffers": buffers}, f)
    close_world(world, finished=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
