"""Distributed data parallel by torchrun: detection from its environment variables, and the pieces a DDP run needs.

``torchrun --nproc_per_node=G -m rangecps.train ...`` (or the ``rangecps-train`` script under torchrun) sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; a plain run has none of them and is one process. NCCL is used on
CUDA, gloo on CPU.
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
    local_rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Initialise the process group when torchrun launched us; a no-op for a single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def teardown() -> None:
    """End the process group after a run that every process finished. The barrier first, so that no process
    closes its connections while a peer is still in a collective. That race is one possible cause of the one abort
    seen in CI ("terminate called without an active exception", a 2-process gloo test), not reproduced since."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op without a process group) and return it."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose statistics cover the batches of all processes, on any device.

    torch's ``SyncBatchNorm`` runs on GPUs only; this one all-reduces per-channel sums through the differentiable
    ``torch.distributed.nn.functional.all_reduce``, so a CPU (gloo) run normalises exactly like one process
    holding the combined batch. It takes (N, C) point features (FRNet's ``BatchNorm1d``) as well as (N, C, H, W)
    maps. Outside a multi-process training forward it is a plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected (N, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        shape = (1, c) + (1,) * (x.dim() - 2)
        # Two passes, the mean first: E[x^2] - E[x]^2 in float32 loses the variance of raw coordinates (FRNet's
        # first norm sees metres), which one process's batch norm keeps.
        count = torch.full((1,), xf.numel() / c, dtype=xf.dtype, device=x.device)
        first = all_reduce(torch.cat([xf.sum(dims), count]))
        total = first[-1]
        mean = first[:c] / total
        centered = xf - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / total
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * total / (total - 1).clamp_min(1))
            self.num_batches_tracked.add_(1)
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        return (y * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every ``BatchNorm2d`` and ``BatchNorm1d`` by a synchronised one: torch's on CUDA,
    :class:`GlooSyncBatchNorm` elsewhere."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm2d, nn.BatchNorm1d):
            new = GlooSyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device_type)
    return module
