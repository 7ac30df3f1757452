"""Segmenter: the labels rangecps-eval writes, for bare points; batches, probabilities, non-finite points and
other sensors' geometries."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny

from rangecps import Segmenter
from rangecps.deploy import GeometryWarning, Prediction
from rangecps.deploy.sensors import SENSORS, geometry_difference, parse_sensor
from rangecps.eval.evaluate import evaluate
from rangecps.io import read_kitti_labels, read_kitti_points
from rangecps.train import train


@pytest.fixture(scope="module")
def run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("segmenter") / "run"
    train(
        tiny(synthetic_kitti, "train.method=cps", "train.epochs=1", "train.max_steps=2"), out, progress=False
    )
    return out


def val_scan(root: Path) -> tuple[Path, np.ndarray]:
    path = sorted((root / "sequences" / "08" / "velodyne").glob("*.bin"))[0]
    return path, read_kitti_points(path)


@pytest.mark.parametrize("net", [None, "ensemble"])
def test_predict_equals_what_rangecps_eval_writes(
    run: Path, synthetic_kitti: Path, tmp_path: Path, net: str | None
) -> None:
    result = evaluate(
        run, out=tmp_path / "eval", net=net, write_predictions=True, num_workers=0, progress=False
    )
    path, points = val_scan(synthetic_kitti)
    written, _ = read_kitti_labels(
        tmp_path / "eval" / "sequences" / "08" / "predictions" / f"{path.stem}.label"
    )
    seg = Segmenter.from_checkpoint(run, device="cpu", net=net)
    assert seg.net == result["net"]
    raw = seg.predict(points, raw_ids=True)
    assert raw.shape == (len(points),) and np.array_equal(raw, written)
    train_ids = seg.predict(points)
    assert train_ids.dtype == np.int64 and train_ids.min() >= 1 and train_ids.max() < seg.num_classes


def test_a_list_runs_as_one_batch_with_the_same_labels(run: Path, synthetic_kitti: Path) -> None:
    seg = Segmenter.from_checkpoint(run, device="cpu")
    clouds = [
        read_kitti_points(p)
        for p in sorted((synthetic_kitti / "sequences" / "08" / "velodyne").glob("*.bin"))
    ]
    together = seg.predict(clouds[:2])
    assert [len(x) for x in together] == [len(c) for c in clouds[:2]]
    for cloud, labels in zip(clouds[:2], together, strict=True):
        assert np.array_equal(labels, seg.predict(cloud))
    assert seg.counts.scans == 4


def test_probabilities_are_the_pixels_softmax(run: Path, synthetic_kitti: Path) -> None:
    seg = Segmenter.from_checkpoint(run, device="cpu", knn=False)
    _, points = val_scan(synthetic_kitti)
    out = seg.predict(points, return_probs=True)
    assert isinstance(out, Prediction)
    assert out.probs.shape == (len(points), seg.num_classes) and out.probs.dtype == np.float32
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    # Without kNN a point's label is the argmax of its pixel's probabilities over the real classes.
    placed = np.ones(len(points), bool)
    placed[np.linalg.norm(points[:, :3], axis=1) == 0] = False
    assert np.array_equal(out.labels[placed], out.probs[placed, 1:].argmax(1)[placed] + 1)


def test_non_finite_points_get_the_fallback_class_and_are_counted(run: Path, synthetic_kitti: Path) -> None:
    seg = Segmenter.from_checkpoint(run, device="cpu", knn=False)
    _, points = val_scan(synthetic_kitti)
    bad = points.copy()
    bad[:5, 3] = np.nan  # intensity
    bad[5:8, 0] = np.inf  # a coordinate
    out = seg.predict(bad, return_probs=True)
    assert out.non_finite == 8 and out.without_pixel >= 8 and seg.counts.non_finite == 8
    assert np.isfinite(out.probs).all()
    assert len(set(out.labels[:8].tolist())) == 1  # one fallback class for every point without a pixel
    # The same scan with those points' coordinates removed from the image labels the other points alike.
    holes = points.copy()
    holes[:8, :3] = np.nan
    assert np.array_equal(out.labels[8:], seg.predict(holes)[8:])


def test_other_sensors_warn_how_the_geometry_differs(run: Path) -> None:
    seg = Segmenter.from_checkpoint(run, device="cpu")
    with pytest.warns(GeometryWarning, match=r"16 rows instead of 64.*vertical field of view"):
        seg.for_sensor("vlp16")
    cloud = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32) * [10, 10, 1, 0.1]
    cloud[:, 3] = np.abs(cloud[:, 3])
    assert seg.predict(cloud).shape == (500,)
    # Same rows and field of view, other column count: not a different sensor.
    trained = seg.trained_geometry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert geometry_difference(trained, trained) is None


def test_sensor_presets_and_custom_geometries() -> None:
    assert parse_sensor("OS1-128") == SENSORS["os1-128"] and SENSORS["os1-128"].height == 128
    g = parse_sensor("32,1024,15,-25,rings")
    assert (g.height, g.width, g.fov_up, g.fov_down, g.rings) == (32, 1024, 15.0, -25.0, True)
    with pytest.raises(ValueError, match=r"not a preset .*hdl64e"):
        parse_sensor("velodyne")
    with pytest.raises(ValueError, match="UP > DOWN"):
        parse_sensor("64,1024,-25,3")


def test_ring_models_need_rings(synthetic_nuscenes: Path, tmp_path: Path) -> None:
    cfg = tiny(synthetic_nuscenes, "data.dataset=synthetic_nuscenes", "train.method=sup_only", "train.epochs=1",
               "train.max_steps=1", "data.width=96", "data.labels=100%")  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    seg = Segmenter.from_checkpoint(tmp_path / "run", device="cpu")
    points = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="rows are laser rings; pass ring"):
        seg.predict(points)
    ring = np.random.default_rng(1).integers(0, 32, 100)
    assert seg.predict(points, ring=ring, raw_ids=True).dtype == np.uint8
    assert torch.device("cpu") == seg.device
