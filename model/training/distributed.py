"""Data-parallel training across processes: the process group from torchrun's environment, the
rank/world helpers, and each rank's slice of a global batch. Without torchrun every helper answers
as rank 0 of 1 does, so the same code runs either way."""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes MLflow runs and checkpoints."""
    return rank() == 0


def default_device() -> str:
    """This process's GPU (the one `distributed` selected for its local rank), else the CPU."""
    return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"


@contextmanager
def distributed(device: str | None = None):
    """Start the process group when launched by torchrun with WORLD_SIZE > 1; yields the device
    this process trains on (`cuda:<LOCAL_RANK>` with NCCL; with device="cpu", gloo). The group is
    destroyed on the way out, also after an error, so no process hangs in a collective."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or is_distributed():
        yield device or default_device()
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        yield device if use_cuda else "cpu"
    finally:
        dist.destroy_process_group()


def rank_slice(indices: list[int], rank: int, world: int) -> list[int]:
    """Rank `rank`'s contiguous part of a global batch; the parts differ in size by at most one
    and, in rank order, concatenate to the global batch (2 ranks x B/2 == one process's B)."""
    n = len(indices)
    start, end = (rank * n) // world, ((rank + 1) * n) // world
    return indices[start:end]


def all_mean(values: dict[str, float], device) -> dict[str, float]:
    """The mean of each value over the ranks (identity in a single process): logged losses then
    describe the global batch, as the averaged gradient does."""
    if not is_distributed():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / world_size()).tolist()))


def all_sum(value: int, device) -> int:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.all_reduce(t)
    return int(t.item())


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_with_grad(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Each tensor concatenated over the ranks in rank order, with gradients flowing back to the
    rank that owns each row (open_clip's gather_features with gather_with_grad), and the row
    where this rank's part starts. Ranks' batches may differ in size (rank_slice: by one)."""
    if not is_distributed():
        return list(tensors), 0
    n = tensors[0].shape[0]
    sizes = torch.tensor([n], device=tensors[0].device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(all_sizes, sizes)
    all_sizes = [int(s) for s in all_sizes]
    most = max(all_sizes)
    out = []
    for t in tensors:
        padded = torch.cat([t, t.new_zeros((most - n, *t.shape[1:]))]) if n < most else t
        parts = dist_nn.all_gather(padded)
        out.append(torch.cat([p[:size] for p, size in zip(parts, all_sizes)]))
    return out, sum(all_sizes[:rank()])
