"""Data-parallel training under ``torchrun``: one run over N processes (NCCL on GPUs, gloo on CPU).

Every method trains through its own ``training_loss`` (some differentiate twice), so instead of
wrapping the model in DistributedDataParallel the gradients are averaged explicitly after each
backward pass: one all-reduce of all gradients flattened together. Each rank takes a disjoint
1/N of every global batch, so the effective batch size is the recipe's, as in DDP.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job."""

    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world


def init_from_env() -> Optional[Dist]:
    """Join the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size())


def is_main_process() -> bool:
    """False on the torchrun ranks other than 0 (they help train; rank 0 measures and reports)."""
    return int(os.environ.get("RANK", "0")) == 0


def local_device() -> torch.device:
    """The device of this torchrun process: its own GPU (LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def average_gradients(model: nn.Module, world: int) -> None:
    """All-reduce (mean) every existing gradient in one flat buffer."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over all ranks (a copy; the input is unchanged)."""
    out = value.clone()
    dist.all_reduce(out)
    return out


def broadcast(obj: Any, ctx: Optional[Dist]) -> Any:
    """Rank 0's ``obj`` on every rank (identity outside torchrun)."""
    if ctx is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Optional[Dist]) -> None:
    if ctx is not None:
        dist.barrier()
