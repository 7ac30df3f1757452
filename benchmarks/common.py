"""What every benchmark records beside its timings, and how it writes them."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch

from rangecps.atomic import atomic_write


def machine() -> dict[str, Any]:
    """The machine and library versions, so that figures from different machines are never compared blindly."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
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
