"""Gradient accumulation (``train.accumulate``): an optimiser step over micro-batches sees the scans a larger batch
sees and, without batch norm, trains exactly as it; resume stays exact; the global batch is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_runs import tiny

import rangecps.train as train_module
from rangecps.checkpoint import load_checkpoint
from rangecps.config import ConfigError
from rangecps.data.build import build_data
from rangecps.data.loader import semi_supervised_loader
from rangecps.models import build_model
from rangecps.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def keys(step: list[tuple[dict, dict | None]]) -> list[list[int]]:
    """The stream positions (``draw``) of a step's labeled and unlabeled scans, in order."""
    out = [[], []]
    for labeled, unlabeled in step:
        out[0] += labeled["draw"].tolist()
        out[1] += unlabeled["draw"].tolist() if unlabeled is not None else []
    return out


def test_micro_batches_cover_the_scans_of_the_larger_batch(synthetic_kitti: Path) -> None:
    data = build_data(tiny(synthetic_kitti), progress=False)
    lab = data.dataset("train", data.split.labeled, with_points=False)
    unl = data.dataset("train", data.split.unlabeled, labels=False, with_points=False)
    big = semi_supervised_loader(lab, unl, 2, 2, num_workers=0, seed=0)
    micro = semi_supervised_loader(lab, unl, 1, 1, num_workers=0, seed=0, micro_batches=2)
    assert len(micro) == len(big) and micro.micro_batches == 2
    for epoch, start in ((0, 0), (1, 0), (1, 1)):  # (1, 1): resuming in the middle of an epoch
        big.set_epoch(epoch, start)
        micro.set_epoch(epoch, start)
        steps = list(micro.steps())
        assert [len(s) for s in steps] == [2] * (len(big) - start)
        assert [keys(s) for s in steps] == [keys([pair]) for pair in big]


def without_batch_norm(name: str, in_channels: int, classes: int, width: float, seed: int) -> torch.nn.Module:
    """The model with every batch norm replaced by the identity: batch norm is the one thing accumulation does
    not reproduce (each micro-batch is normalised alone)."""
    net = build_model(name, in_channels, classes, width, seed=seed)
    for parent in list(net.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, torch.nn.Identity())
    return net


@pytest.mark.parametrize("method", ["sup_only", "cps"])
def test_accumulated_micro_batches_train_as_the_larger_batch_without_batch_norm(
    synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    monkeypatch.setattr(train_module, "build_model", without_batch_norm)
    # The rangecps recipe takes every loss as a mean over scans: two halves of a batch average to the batch.
    common = (f"train.method={method}", "train.epochs=4", "train.max_steps=2", "train.amp=off")
    train(tiny(synthetic_kitti, *common, "data.batch_size=2", "data.unlabeled_batch_size=2"),
          tmp_path / "batch", progress=False)  # fmt: skip
    train(tiny(synthetic_kitti, *common, "train.accumulate=2"), tmp_path / "micro", progress=False)
    one, two = (
        load_checkpoint(tmp_path / "batch" / "last.pt"),
        load_checkpoint(tmp_path / "micro" / "last.pt"),
    )
    assert one["derived"]["global_batch"] == two["derived"]["global_batch"] == 2
    assert one["derived"]["total_steps"] == two["derived"]["total_steps"] and two["step"] == 2
    # The gradients, scale included: AdamW's first moments (a sum of the steps' gradients) agree to rounding,
    # relative to each tensor's largest (without batch norm the gradients reach tens).
    for a, b in zip(one["optimizers"], two["optimizers"], strict=True):
        for i, state in a["state"].items():
            m_a, m_b = state["exp_avg"], b["state"][i]["exp_avg"]
            assert float((m_a - m_b).abs().max()) <= 1e-4 * float(m_a.abs().max()), i
    # The weights: AdamW's normalised step turns that rounding into up to ~3e-5 on weights whose gradients are
    # near 0 (and CPS's argmax targets may flip on a near-tie pixel).
    for a, b in zip(one["nets"], two["nets"], strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
    start = without_batch_norm("fidnet", 6, 20, 0.125, seed=0).state_dict()
    moved = any(not torch.equal(start[k], one["nets"][0][k]) for k in start)
    assert moved  # the nets trained: the equality above is not that of two untouched nets


def test_resume_with_accumulation_is_exact(synthetic_kitti: Path, tmp_path: Path) -> None:
    base = ("train.method=cps_lasermix", "train.epochs=3", "train.accumulate=2")
    train(tiny(synthetic_kitti, *base, "train.max_steps=3"), tmp_path / "straight", progress=False)
    train(tiny(synthetic_kitti, *base, "train.max_steps=1"), tmp_path / "split", progress=False)
    train(
        tiny(synthetic_kitti, *base, "train.max_steps=3"), tmp_path / "split", resume="auto", progress=False
    )
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["step"] == b["step"] == 3
    for x, y in zip(a["nets"], b["nets"], strict=True):
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_accumulate_below_one_is_refused(synthetic_kitti: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.accumulate: 0 is not allowed; must be >= 1"):
        tiny(synthetic_kitti, "train.accumulate=0")
