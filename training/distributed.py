"""What the processes of a job share: the process group, averaged gradients, and branches that every
rank takes together (one all-reduce decides them)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def setup_distributed(rank: int, world_size: int, backend: str, init_method: Optional[str]) -> None:
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)


def average_gradients(module: torch.nn.Module, world_size: int) -> None:
    """All-reduce the gradients of every parameter that has one (one flat buffer)."""
    if world_size <= 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


def any_rank(flags: list, device, world_size: int) -> list:
    """For each flag, True if it is True on any rank (so every rank takes the same branch): one all-reduce."""
    if world_size <= 1:
        return [bool(flag) for flag in flags]
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in values.tolist()]


def every_rank(flag: bool, device, world_size: int) -> bool:
    """True if `flag` is True on every rank (so every rank takes the same branch): one all-reduce."""
    return not any_rank([not flag], device, world_size)[0]


def max_over_ranks(value: int, device, world_size: int) -> int:
    """The largest of the ranks' `value`s: one all-reduce."""
    if world_size <= 1:
        return value
    agreed = torch.tensor([value], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return int(agreed.item())
