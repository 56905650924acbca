"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on CUDA).

The trainer is data parallel exactly as DDP is: every process holds the same student and
discriminator heads, takes its shard of each global batch, and the gradients are summed over
processes before every optimiser step (one coalesced ``all_reduce`` per parameter group, what
DDP's reducer does at the end of the backward). The reduction is explicit rather than through
the ``DistributedDataParallel`` wrapper because the student UNet is called k times (plus the
teacher passes through the same module with LoRA off) before one backward, which DDP's
per-forward hooks only allow in ``static_graph`` mode. Each micro-batch loss is weighted by
(its samples / global batch), so the summed gradient is the global-batch mean, independent of
the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device_type: str = "cpu") -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE`` > 1);
    a single process otherwise. Backend: nccl for CUDA, gloo for the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def all_reduce_sum_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Sum ``tensors`` over processes in place (one flattened all_reduce)."""
    if not info.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[off:off + n].view_as(t))
        off += n


def all_reduce_grads_(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients of ``params`` over processes (a missing grad counts as zero)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_sum_([p.grad for p in params], info)


def broadcast_(tensors: list[torch.Tensor], info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s values into every process (initial weights, resumed state)."""
    if not info.enabled:
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
