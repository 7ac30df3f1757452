"""Run-folder bookkeeping of training: the metrics log and what a resumed run may change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Keys that may differ between a checkpoint's config and the resuming one: they change when and what is logged
# or how long to go on, not what is computed.
RESUMABLE_CHANGES = {"train.max_steps", "train.val_every", "train.log_every", "train.ckpt_every"}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


class RunLog:
    """Rank-0 logging: ``metrics.jsonl`` lines and TensorBoard scalars."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tb"))
            self.file = open(out_dir / "metrics.jsonl", "a")

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
