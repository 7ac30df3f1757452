"""Training FRNet, a point model: every method trains through the one loop, resume is exact, and the run records
what inference needs (a point model's inputs and its iteration-based schedule)."""

from pathlib import Path

import pytest
import torch
import yaml
from tiny_runs import tiny

from rangecps.checkpoint import load_checkpoint
from rangecps.train import train

FRNET = ("model.name=frnet", "model.width=0.125", "loss.lovasz=1.5", "loss.boundary=1.0")


def nets(path: Path) -> list[dict[str, torch.Tensor]]:
    return load_checkpoint(path)["nets"]


def test_frnet_resume_is_exact(synthetic_kitti: Path, tmp_path: Path, one_thread: None) -> None:
    base = (*FRNET, "train.method=cps_lasermix", "train.epochs=2", "semi.pseudo_threshold=0.0")
    train(tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "straight", progress=False)
    train(tiny(synthetic_kitti, *base, "train.max_steps=2"), tmp_path / "split", progress=False)
    train(
        tiny(synthetic_kitti, *base, "train.max_steps=4"), tmp_path / "split", resume="auto", progress=False
    )
    straight, split = nets(tmp_path / "straight" / "last.pt"), nets(tmp_path / "split" / "last.pt")
    assert len(straight) == 2
    for a, b in zip(straight, split, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)
    # The two nets started apart (seeded per net) and stay apart.
    assert not torch.equal(straight[0]["head.classifier.weight"], straight[1]["head.classifier.weight"])


@pytest.mark.parametrize("method", ["sup_only", "mean_teacher", "lasermix"])
def test_frnet_methods_train_and_record_a_point_model(
    method: str, synthetic_kitti: Path, tmp_path: Path, one_thread: None
) -> None:
    cfg = tiny(synthetic_kitti, *FRNET, f"train.method={method}", "train.steps=7", "train.max_steps=3")
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and summary["total_steps"] == 7  # the one-cycle schedule spans train.steps
    derived = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["derived"]
    assert derived["in_channels"] == 4 and derived["total_steps"] == 7
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["config"]["model"]["name"] == "frnet"
    assert state["schedulers"][0]["total_steps"] == 7
    assert summary["val_scored"] == "points"
    for name, value in summary["val_pixel_miou"].items():
        assert 0.0 <= value <= 1.0, name
