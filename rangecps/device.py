"""Device and mixed-precision choices shared by training and evaluation."""

from __future__ import annotations

import os
from typing import Any

import torch


def select_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: ``auto`` is bf16 on GPUs that support it, else fp16; ``bf16`` /
    ``fp16`` force one; ``off`` and any CPU run use none (CPU autocast is slower than float32 for these nets)."""
    if setting == "off" or device.type != "cuda":
        return None
    if setting == "fp16" or (setting == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Move a batch's tensors to ``device``; ``input`` (B, C, H, W) goes channels_last when asked."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if channels_last:
        out["input"] = out["input"].contiguous(memory_format=torch.channels_last)
    return out
