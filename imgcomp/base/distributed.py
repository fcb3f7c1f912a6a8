"""torchrun support: process group set-up and the few collectives training and val.py need.

Under `torchrun` (WORLD_SIZE > 1 in the environment) each process is one rank: NCCL on
CUDA, gloo on CPU. A plain `python train.py` run is a world of one and never touches
torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the torchrun process group if there is one; returns the world and this rank's
    device (cuda:LOCAL_RANK for CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return World(), device
    world = World(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=(
            device if device.type == "cuda" else None))
    return world, device


def close_world(world: World, finished: bool = False) -> None:
    """Leave the process group. After a normal finish (`finished`) wait for every rank first:
    a rank that tears gloo down while a peer still saves or reduces can abort at exit. After
    an error, do not wait, since a peer may never get there."""
    if world.distributed and dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def all_ranks_agree(flag: bool, world: World, device: torch.device) -> bool:
    """True only if `flag` is true on every rank (one tiny all-reduce)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True if `flag` is true on some rank."""
    return not all_ranks_agree(not flag, world, device)


def gather_to_main(obj: Any, world: World) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
