"""Data parallelism across processes with torch.distributed, launched by torchrun.

Every process holds the whole model and takes an equal share of each global batch. The loss is
each process's sum over its share divided by the global count, times the number of processes,
so DistributedDataParallel's gradient average is exactly the gradient of the global mean: the
same number single-process training with the same global batch computes (up to summation order).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str) -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun (WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard(batch, rank: int, world: int):
    """This process's share of a global batch: rows [rank::world]-style contiguous slices along dim 0."""
    if world == 1:
        return batch
    return tuple(b.tensor_split(world)[rank] if isinstance(b, torch.Tensor) else b for b in batch)


def global_sum(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def finish(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()
