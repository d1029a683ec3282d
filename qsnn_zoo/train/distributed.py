"""Data-parallel training under ``torchrun``: environment detection, DDP wrapping, reductions.

Without torchrun's environment everything here is a no-op, so one code path serves a single
process on CPU or GPU and N processes (gloo on CPU, NCCL on CUDA).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str) -> torch.device:
    """``requested`` ("cuda", "cuda:N", "cpu"), or cuda when available; each of torchrun's ranks takes
    its local GPU (``LOCAL_RANK``)."""
    if not requested:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but CUDA is not available; use --device cpu")
        if requested == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(requested)


def init_distributed(device: torch.device) -> DistInfo:
    """Joins the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    """Leaves the process group after a finished run, every rank at once: a rank tearing down its gloo
    connections while another still reads them can abort the other ("terminate called without an
    active exception", seen once in tests/test_ddp.py on a loaded 2-core machine)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``module`` when data-parallel, else ``module`` itself."""
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank: a decision every rank must take alike (stopping early)."""
    if not info.enabled:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device), info).item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


@torch.no_grad()
def check_replicas_agree(model: nn.Module, info: DistInfo) -> None:
    """Raises if the ranks' parameters differ: the data-parallel replicas must stay identical."""
    if not info.enabled:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])  # on the GPU for NCCL
    gathered = [torch.zeros_like(checksum) for _ in range(info.world_size)]
    dist.all_gather(gathered, checksum)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("data-parallel replicas hold different weights; this is a bug, please report it")
