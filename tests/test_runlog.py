"""Resume rules on synthetic checkpoints: which best nets a resumed run keeps, and which checkpoints it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rangecps.checkpoint import save_checkpoint
from rangecps.config import Config, to_dict
from rangecps.runlog import check_resumable, resumed_best


def _weights(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2,), value)}


def test_resumed_best_keeps_a_best_written_after_the_checkpoint(tmp_path: Path) -> None:
    # The checkpoint at step 6 knew net a's best at step 4; a validation at step 8 then wrote a better net a to
    # best.pt before the run was killed. Net b's best (step 2) is older than best.pt's entry (step 4): stale.
    save_checkpoint(
        tmp_path / "best.pt",
        {
            "nets": [_weights(8.0), _weights(4.0)],
            "best": [0.5, 0.4],
            "best_steps": [8, 4],
            "step": 6,
            "config": to_dict(Config()),
        },
    )
    best, steps, nets = resumed_best(tmp_path, 6, [0.3, 0.2], [4, 2])
    assert best == [0.5, 0.2] and steps == [8, 2]
    assert torch.equal(nets[0]["w"], torch.full((2,), 8.0))
    assert nets[1] is None  # best.pt holds another step's net b: not this record's weights


def test_resumed_best_without_best_pt_keeps_the_checkpoints_record(tmp_path: Path) -> None:
    best, steps, nets = resumed_best(tmp_path, 6, (0.3,), (4,))
    assert (best, steps, nets) == ([0.3], [4], [None])


def test_check_resumable_refuses_weights_only_and_changed_keys(tmp_path: Path) -> None:
    resolved = to_dict(Config())
    path = tmp_path / "last.pt"
    check_resumable(path, {"optimizers": [], "config": resolved}, resolved)
    with pytest.raises(ValueError, match="holds weights only"):
        check_resumable(path, {"config": resolved}, resolved)
    changed = {**resolved, "optim": {**resolved["optim"], "lr": resolved["optim"]["lr"] * 2}}
    with pytest.raises(ValueError, match=r"last.pt: cannot resume, the config differs in optim.lr"):
        check_resumable(path, {"optimizers": [], "config": changed}, resolved)
    later = {**resolved, "train": {**resolved["train"], "max_steps": 7}}
    check_resumable(path, {"optimizers": [], "config": later}, resolved)  # when to stop may change
