"""What every benchmark records beside its timings, and how it writes them."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from rangecps.atomic import atomic_write


def cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """The machine and library versions, so that figures from different machines are never compared blindly."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "memory_gib": memory_gib(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "torch": torch.__version__,
        },
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's result as JSON (atomically) with the machine description, and say where."""
    with atomic_write(path, "w") as f:
        json.dump({**result, "machine": machine()}, f, indent=2)
    print(f"wrote {path}")


def fresh_numba_timings(code: str, extra_env: dict[str, str] | None = None) -> list[float]:
    """Run ``code`` in a fresh interpreter whose numba cache is empty and return the floats it prints:
    first-call timings there are pure compile time, kept apart from the benchmarks' warm timings."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, **(extra_env or {})}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    return [float(v) for v in out.stdout.split()]


def peak_rss_mib() -> float:
    """The process's peak resident memory so far: ``VmHWM`` of /proc/self/status on Linux. Not ru_maxrss, which
    Linux carries over from the parent through fork and exec: a child started by a parent of 4 GiB reports at
    least 4 GiB there. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS: taken as KiB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float | None:
    """The process's resident memory now (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def timed_ms(fn: Callable[[], object], repeats: int, warmup: int, cuda: bool) -> list[float]:
    """Milliseconds of ``repeats`` calls (synchronised on a GPU) after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - t0))
    return out
