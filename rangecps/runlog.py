"""Run-folder bookkeeping of training: which files make a run, the metrics log, and what a resumed run may change."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from rangecps.atomic import atomic_write
from rangecps.checkpoint import load_checkpoint
from rangecps.config import Config, ConfigError, from_dict, to_dict
from rangecps.folders import refuse_earlier_results
from rangecps.models import is_point_model

# What a training run leaves in its folder. Any of the first five marks a folder that holds a run; --overwrite
# removes them all (other files, e.g. the eval_* results of rangecps-eval, stay).
RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl", "summary.json", "config.yaml")
RUN_FILES = (*RUN_MARKERS, "splits", "tb")

# Keys that may differ between a checkpoint's config and the resuming one: they change when and what is logged,
# how long to go on, or how fast the data is read (the README: loader workers do not change results), not what is
# computed.
RESUMABLE_CHANGES = {
    "train.max_steps",
    "train.val_every",
    "train.log_every",
    "train.ckpt_every",
    "data.num_workers",
}

# Keys holding paths: compared as absolute, normalised paths ("/a/sk/" = "/a/sk"; a relative path is taken from
# the current directory).
PATH_KEYS = {"data.root", "data.prep_dir"}


def absolute_path(path: str | os.PathLike) -> str:
    """``path`` absolute and normalised (``~`` expanded, ``..`` and trailing slashes removed, links kept)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _comparable(key: str, value: Any) -> Any:
    """The value as it matters to the run: paths absolute, labeled shares as percentages."""
    if key in PATH_KEYS and isinstance(value, str):
        return absolute_path(value)
    if key == "data.labels" and value is not None:
        from rangecps.data.splits import canonical_share

        try:
            return canonical_share(value)
        except ValueError:
            return value
    return value


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two resolved configs (paths and shares compared by meaning)."""
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if _comparable(k, fa.get(k)) != _comparable(k, fb.get(k)))


def remove_run(out_dir: Path) -> None:
    """Delete the files of an earlier run in ``out_dir`` (``--overwrite``)."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The entries of a ``metrics.jsonl``; a line cut short by a kill (not valid JSON) is skipped."""
    entries = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("step"), int):
                entries.append(entry)
    return entries


class RunLog:
    """Rank-0 logging: ``metrics.jsonl`` lines and TensorBoard scalars.

    ``resume_step``: the step a run continues from (0 for a fresh start). What an earlier sitting logged after that
    step (between its last checkpoint and its end) is dropped, since the run computes those steps again: the
    entries of ``metrics.jsonl`` after it are removed (the file rewritten atomically) and TensorBoard hides its
    events from ``resume_step + 1`` on (``purge_step``).
    """

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            path = out_dir / "metrics.jsonl"
            if path.is_file():
                kept = [e for e in read_metrics(path) if e["step"] <= resume_step]
                with atomic_write(path, "w") as f:
                    f.write("".join(json.dumps(e) + "\n" for e in kept))
            purge = resume_step + 1 if (out_dir / "tb").is_dir() else None
            self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=purge)
            self.file = open(path, "a")

    def log(self, step: int, values: dict[str, float], prefix: str) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}) + "\n")
        self.file.flush()
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with ``data.root`` (and a prep folder, if set) absolute: what the run records and resumes by."""
    changes = {"root": absolute_path(cfg.data.root)}
    if getattr(cfg.data, "prep_dir", None):
        changes["prep_dir"] = absolute_path(cfg.data.prep_dir)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))


def prepare_folder(out_dir: Path, resume: str | None, overwrite: bool, own_checkpoint: bool) -> None:
    """Refuse a folder holding an earlier run that this one would mix with; clear it when asked (or when the
    run to continue left no checkpoint, so that continuing means starting over)."""
    if overwrite:
        remove_run(out_dir)
    elif resume is None:
        refuse_earlier_results(
            out_dir,
            RUN_MARKERS,
            "a training run",
            "pass --resume auto to continue it or --overwrite to start over",
        )
    elif not own_checkpoint:
        refuse_earlier_results(
            out_dir,
            RUN_MARKERS,
            "a training run",
            f"resuming from {resume} into it would mix two runs; choose another --out, or pass --overwrite to "
            "replace that run",
        )
    elif not (out_dir / "last.pt").is_file():
        remove_run(out_dir)  # a sitting killed before its first checkpoint: its logs and best.pt are void


def complete_run(
    out_dir: Path, ckpt_path: Path, state: dict[str, Any], stop_step: int, rank: int
) -> dict[str, Any]:
    """What resuming a complete run returns: its summary, written only if its end did not get to write it."""
    step = int(state["step"])
    path = out_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if summary.get("steps") != step:
        cfg, derived = state["config"], state["derived"]
        val = {}
        for entry in read_metrics(out_dir / "metrics.jsonl"):
            if entry["step"] == step and any(k.startswith("val/") for k in entry):
                val = {k.removeprefix("val/"): v for k, v in entry.items() if k.startswith("val/")}
        summary = {
            "method": cfg["train"]["method"],
            "labels": cfg["data"]["labels"],
            "dataset": cfg["data"]["dataset"],
            "steps": step,
            "total_steps": derived["total_steps"],
            "seconds": round(float(state.get("seconds", 0.0)), 1),
            "resumed_at_step": step,
            "precision": derived["precision"],
            "val_pixel_miou": val,
            "val_scored": "points" if is_point_model(cfg["model"]["name"]) else "range pixels",
            "rank": 0,
            "nets": list(state["net_names"]),
            "best_val_pixel_miou": list(state["best"]),
            "best_steps": list(state["best_steps"]),
            "revision": state["revision"],
            "non_finite_points": int(state.get("non_finite_points", 0)),
        }
        if rank == 0 and absolute_path(ckpt_path) == absolute_path(out_dir / "last.pt"):
            with atomic_write(path, "w") as f:
                json.dump(summary, f, indent=1)
    return {**summary, "rank": rank, "already_complete": True, "stop_step": stop_step}


def check_resumable(ckpt_path: Path, state: dict[str, Any], resolved: dict[str, Any]) -> None:
    """Refuse, naming the file, a checkpoint this config cannot continue: weights only (a best.pt), or a config
    that differs in a key outside :data:`RESUMABLE_CHANGES`. Keys added to the config since the checkpoint was
    written count as their defaults, so an older run resumes unless such a key is set otherwise now."""
    if "optimizers" not in state:
        raise ValueError(f"{ckpt_path}: holds weights only (a best.pt); resume from a last.pt")
    saved = state["config"]
    with suppress(ConfigError):
        saved = to_dict(from_dict(saved, str(ckpt_path)))
    changed = [k for k in config_differences(saved, resolved) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{ckpt_path}: cannot resume, the config differs in {', '.join(changed)}")


def resumed_best(
    out_dir: Path, step: int, best: list[float], best_steps: list[int]
) -> tuple[list[float], list[int], list[dict[str, torch.Tensor] | None]]:
    """Each net's best score, its step and its weights for a run resumed at ``step`` from a checkpoint recording
    ``best`` / ``best_steps``, reconciled with the folder's best.pt (weights None where best.pt has none)."""
    best, best_steps = list(best), list(best_steps)
    nets: list[dict[str, torch.Tensor] | None] = [None] * len(best)
    if not (out_dir / "best.pt").is_file():
        return best, best_steps, nets
    saved = load_checkpoint(out_dir / "best.pt", "cpu")
    for k in range(len(best)):
        # best.pt may be newer than the checkpoint (a validation after it, before the kill): keep such a net's best
        # with its own score and step, which the replay of those steps reproduces.
        if saved["best_steps"][k] > step:
            best[k], best_steps[k] = saved["best"][k], saved["best_steps"][k]
        if saved["best_steps"][k] == best_steps[k]:
            nets[k] = saved["nets"][k]
    return best, best_steps, nets
