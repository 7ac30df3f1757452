"""rangecps-infer on a folder of KITTI scans and on a ROS 2 bag written by rosbags: one prediction per scan, equal
to Segmenter's, a summary, renders; refused and failed runs leave no folder behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny

from rangecps import Segmenter
from rangecps.deploy.infer import infer_main
from rangecps.io import read_kitti_labels, read_kitti_points
from rangecps.train import train


@pytest.fixture(scope="module")
def run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("infer") / "run"
    train(
        tiny(synthetic_kitti, "train.method=sup_only", "train.epochs=1", "train.max_steps=2"),
        out,
        progress=False,
    )
    return out


def test_a_folder_of_kitti_scans(run: Path, synthetic_kitti: Path, tmp_path: Path) -> None:
    velodyne = synthetic_kitti / "sequences" / "08" / "velodyne"
    out = tmp_path / "preds"
    assert infer_main([str(run), str(velodyne), "--out", str(out), "--no-progress", "--render"]) == 0
    seg = Segmenter.from_checkpoint(run, device="cpu")
    scans = sorted(velodyne.glob("*.bin"))
    for path in scans:
        written, _ = read_kitti_labels(out / "predictions" / f"{path.stem}.label")
        assert np.array_equal(written, seg.predict(read_kitti_points(path), raw_ids=True))
        assert (out / "renders" / f"{path.stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scans"] == len(scans) and summary["format"] == "kitti" and summary["ms_per_scan"] > 0
    assert summary["points"] == sum(p.stat().st_size // 16 for p in scans)
    assert sum(summary["class_shares"].values()) == pytest.approx(1.0)
    # An existing results folder is not overwritten without --overwrite, and nothing is left half-written.
    assert infer_main([str(run), str(velodyne), "--out", str(out), "--no-progress"]) == 2
    assert (
        infer_main([str(run), str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    )
    assert not (tmp_path / "x").exists() and [p.name for p in tmp_path.iterdir()] == ["preds"]


def test_a_ros2_bag_with_npy_train_ids(run: Path, synthetic_kitti: Path, tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    from bags import write_bag

    clouds = [
        read_kitti_points(p)
        for p in sorted((synthetic_kitti / "sequences" / "08" / "velodyne").glob("*.bin"))
    ]
    ring = [np.zeros(len(c), np.uint16) for c in clouds]
    write_bag(tmp_path / "drive", {"/velodyne_points": [(c, r, 10**9 * (i + 1)) for i, (c, r) in
                                                        enumerate(zip(clouds, ring, strict=True))]})  # fmt: skip
    out = tmp_path / "preds"
    argv = [
        str(run),
        str(tmp_path / "drive"),
        "--out",
        str(out),
        "--format",
        "npy",
        "--train-ids",
        "--no-progress",
    ]
    assert infer_main(argv) == 0
    seg = Segmenter.from_checkpoint(run, device="cpu")
    files = sorted((out / "predictions").glob("*.npy"))
    assert len(files) == len(clouds)
    for path, cloud in zip(files, clouds, strict=True):
        assert path.name.startswith("velodyne_points_")
        assert np.array_equal(np.load(path), seg.predict(cloud))
    assert json.loads((out / "summary.json").read_text())["ids"] == "train"
