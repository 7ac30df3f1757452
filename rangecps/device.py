"""Device and precision choices shared by training and evaluation.

On a GPU, ``train.amp=auto`` is bf16 where supported, else fp16, with channels_last. On a CPU the fast choice
depends on the CPU: with native bf16 arithmetic (AVX512-BF16 or AMX) oneDNN's bf16 convolutions in
channels_last run FIDNet's CPS step 2.2x faster than float32 in the default layout (measured on an AMD EPYC with
AVX512-BF16: 1.59 -> 0.73 s at width 0.25, 64x512; 3.4x on an Intel Xeon with AMX); without it bf16 is emulated
and float32 is kept. :func:`precision` makes the choice once and says why, so that runs can record it.
:func:`release_host_memory` gives the C heap's free pages back to the system between training steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def release_host_memory() -> None:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``; nothing elsewhere).

    Training point models on a CPU allocates tensors of another size every step (each scan has its own number of
    points), and glibc keeps the freed blocks in its heap: a CPS run of FRNet at width 0.25 grew from 4 to 8.6 GB
    in 30 steps and to 12 GB in 65 (measured 2026-12-08; the same with the code before), holding nothing, until the
    machine ran out. Trimming after every step kept it under 4.9 GB, for about 11 ms a step (of 6 s). Image
    models' batches keep one shape, so their heap does not grow, and a trim there costs more (36 ms a step of a
    CPU-sized FIDNet run): training trims after point models' steps only."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def select_device() -> torch.device:
    """This process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def cpu_features() -> dict[str, bool]:
    """Which bf16-relevant instruction sets this CPU has, as PyTorch sees them (False where it cannot tell)."""
    probes = {"avx512": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
              "amx": "_is_amx_tile_supported"}  # fmt: skip
    out = {}
    for name, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        out[name] = bool(fn()) if fn is not None else False
    return out


def cpu_has_native_bf16() -> bool:
    """True where bf16 matrix arithmetic runs in hardware (AVX512-BF16 or AMX), so bf16 autocast pays off."""
    f = cpu_features()
    return f["avx512_bf16"] or f["amx"]


@dataclass(frozen=True)
class Precision:
    """The autocast dtype and memory layout a run uses on its device, and why (recorded with every run)."""

    amp: torch.dtype | None
    channels_last: bool
    reason: str

    def record(self) -> dict[str, Any]:
        return asdict(self) | {"amp": str(self.amp).removeprefix("torch.") if self.amp else "off"}


def precision(amp_setting: str, channels_last: bool, device: torch.device) -> Precision:
    """Resolve ``train.amp`` (auto / bf16 / fp16 / off) and ``train.channels_last`` for ``device``.

    ``auto`` is bf16 on GPUs that support it, else fp16; on a CPU bf16 where :func:`cpu_has_native_bf16`, else
    off. ``bf16`` and ``fp16`` force a dtype (fp16 on a CPU is allowed but slow), ``off`` keeps float32.
    channels_last is used wherever the setting asks for it: it is faster on GPUs and on both CPUs measured.
    """
    if device.type == "cuda":
        if amp_setting == "off":
            amp, why = None, "train.amp=off"
        elif amp_setting == "fp16" or (amp_setting == "auto" and not torch.cuda.is_bf16_supported()):
            amp, why = torch.float16, f"train.amp={amp_setting} on {torch.cuda.get_device_name(device)}"
        else:
            amp, why = torch.bfloat16, f"train.amp={amp_setting} on {torch.cuda.get_device_name(device)}"
    else:
        features = ", ".join(k for k, v in cpu_features().items() if v) or "none detected"
        if amp_setting == "auto":
            native = cpu_has_native_bf16()
            amp = torch.bfloat16 if native else None
            why = f"train.amp=auto; CPU {'has' if native else 'lacks'} native bf16 (features: {features})"
        else:
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp_setting]
            why = f"train.amp={amp_setting} (CPU features: {features})"
    return Precision(amp, channels_last, why)


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype alone of :func:`precision` (for callers that keep their own layout)."""
    return precision(setting, False, device).amp


def to_device(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    """Move a batch's tensors to ``device``; ``input`` (B, C, H, W) goes channels_last when asked."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if channels_last:
        out["input"] = out["input"].contiguous(memory_format=torch.channels_last)
    return out
