"""Atomic checkpoints holding everything a run needs to continue exactly.

A checkpoint is a dict of tensors and plain Python values (so ``torch.load(weights_only=True)`` reads it):
``nets`` (state dicts), ``optimizers``, ``schedulers``, ``scaler`` (or None), ``step``, ``rng`` (the LaserMix
generator and torch's global states), ``config`` (the resolved config as a dict), ``revision`` (the code revision)
and ``best`` (the best validation mIoU so far). It is written to a temporary file beside the target and renamed
into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import torch

from rangecps import __version__
from rangecps.atomic import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary code runs); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable rangecps checkpoint: {e}") from e
    missing = {"nets", "config", "step"} - set(state)
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {sorted(missing)}")
    return state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """``git describe``-like revision of the source tree (``+dirty`` when modified), else the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"rangecps {__version__} (no git checkout)"
