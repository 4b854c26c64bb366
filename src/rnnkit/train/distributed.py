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


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), known before the group is joined."""
    return int(os.environ.get("RANK", "0"))


def shard(batch, rank: int, world: int, dim: int = 0):
    """This process's share of a global batch: contiguous slice `rank` of `world` along dim
    (dim 0 for batches, dim 1 for torch-style hidden states). Non-tensors pass through."""
    if world == 1 or batch is None:
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(world, dim=dim)[rank]
    return tuple(shard(b, rank, world, dim) if isinstance(b, (torch.Tensor, tuple)) and not hasattr(b, "_fields")
                 else b for b in batch)


def gather(state, world: int, dim: int = 1):
    """The inverse of shard for a (nested tuple of) hidden state(s): every process gets the whole."""
    if world == 1 or state is None:
        return state
    if isinstance(state, torch.Tensor):
        parts = [torch.empty_like(state) for _ in range(world)]
        dist.all_gather(parts, state.contiguous())
        return torch.cat(parts, dim=dim)
    return tuple(gather(s, world, dim) for s in state)


def global_sum(x: float, world: int) -> float:
    if world == 1:
        return x
    t = torch.tensor([float(x)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def finish(world: int) -> None:
    """Leave the group together: rank 0 tests alone at the end, and a gloo group torn down while a
    peer is still busy (or already gone) hangs in its destructor."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
