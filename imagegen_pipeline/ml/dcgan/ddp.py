"""Multi-process training under torchrun: the same loop, with G and D wrapped in DistributedDataParallel.

Everything reads torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT); without it the
process is a world of one and nothing is wrapped. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from imagegen_pipeline.ml.runtime import Runtime, resolve_runtime


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # this process's index in the world
    local_rank: int = 0  # index on this machine: picks the GPU
    world_size: int = 1  # processes in all

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, samples and exports."""
        return self.rank == 0


def current() -> DistInfo:
    """The process group this process is already in (a world of one when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())


def init_distributed(device: str = "auto", *, timeout_s: int = 1800, cpu_bf16: bool = False) -> tuple[DistInfo, Runtime]:
    """Join torchrun's process group when launched by it; pick this rank's device either way."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    runtime = resolve_runtime(device, local_rank=local_rank, cpu_bf16=cpu_bf16)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if runtime.is_cuda else "gloo"
        kwargs = {"device_id": runtime.device} if runtime.is_cuda else {}
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s), **kwargs)
    return current(), runtime


def wrap(module: nn.Module, info: DistInfo, runtime: Runtime) -> nn.Module:
    """DDP-wrap a module (a no-op for a world of one). G's BatchNorm becomes SyncBatchNorm on CUDA; on CPU
    (gloo has no SyncBatchNorm) each rank normalises its own batch and rank 0's running stats are broadcast."""
    if not info.enabled:
        return module
    if runtime.is_cuda and any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [runtime.device.index] if runtime.is_cuda else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (whose state_dict keys have no prefixes)."""
    module = getattr(module, "_orig_mod", module)
    return module.module if isinstance(module, DistributedDataParallel) else module


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t)
        t /= info.world_size
    return t


def barrier(info: DistInfo) -> None:
    """Wait until every rank gets here (e.g. until rank 0 has cleared a folder the others are about to read)."""
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def params_agree(module: nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds the same parameters (a float64 checksum, max == min over ranks): DDP keeps
    them equal unless a rank went its own way, which would silently train a different model per rank."""
    if not info.enabled:
        return True
    total = torch.stack([p.detach().double().sum() for p in unwrap(module).parameters()]).sum()
    spread = torch.stack([total, -total])
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return bool(torch.isclose(spread[0], -spread[1], rtol=0.0, atol=1e-9 * max(1.0, float(total.abs()))))
