"""Test-time augmentation: the release's views, reproducible from the seed; identity views give exactly the plain
path's labels (image and point models, kNN and ensembles included); a flip view of a mirror-symmetric scene gives
the mirrored prediction; rangecps-eval, Segmenter and rangecps-infer agree and record the views."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny

import rangecps.eval.evaluate as evaluate_module
from rangecps import Segmenter
from rangecps.cli import eval_main
from rangecps.config import ConfigError, load_config
from rangecps.data.encoding import InputEncoding
from rangecps.data.index import Geometry
from rangecps.data.point_batch import added_point_keys
from rangecps.data.scan_mixing import SphericalImage, interpolated_points
from rangecps.data.tta import View, tta_views, view_sample
from rangecps.deploy.infer import infer_main
from rangecps.eval.evaluate import evaluate
from rangecps.eval.tta import owner_image
from rangecps.io import Scan, read_kitti_labels, read_kitti_points
from rangecps.projection import project_spherical
from rangecps.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

FRNET = ("model.name=frnet", "model.width=0.125")


@pytest.fixture(scope="module")
def run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CPS FIDNet trained long enough (40 steps) to predict many classes: a one-class net proves nothing."""
    out = tmp_path_factory.mktemp("tta") / "run"
    cfg = tiny(
        synthetic_kitti, "train.method=cps", "train.epochs=100", "train.max_steps=40", "data.labels=100%"
    )
    train(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def frnet_run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FRNet run trained with RangeInterpolation, so that its views carry interpolated points too."""
    out = tmp_path_factory.mktemp("tta_frnet") / "run"
    cfg = tiny(synthetic_kitti, *FRNET, "data.augment.range_interpolation=true", "train.method=cps",
               "train.epochs=100", "train.max_steps=6", "data.labels=100%")  # fmt: skip
    train(cfg, out, progress=False)
    return out


def val_points(root: Path, i: int = 0) -> np.ndarray:
    return read_kitti_points(sorted((root / "sequences" / "08" / "velodyne").glob("*.bin"))[i])


def test_views_are_the_releases_and_reproducible_from_the_seed() -> None:
    views = tta_views(8, seed=3)
    assert views == tta_views(8, seed=3) and views != tta_views(8, seed=4)
    assert tta_views(3, seed=3) == views[:3]  # view v depends on (seed, v) alone
    assert [(v.negate_x, v.negate_y) for v in views[:4]] == [(False, False), (True, False), (False, True),
                                                              (True, True)]  # fmt: skip
    assert [(v.negate_x, v.negate_y) for v in views[4:]] == [(v.negate_x, v.negate_y) for v in views[:4]]
    assert all(-np.pi <= v.yaw <= np.pi and 0.95 <= v.scale <= 1.05 for v in views)
    assert len({v.yaw for v in views}) == 8 and tta_views(0) == ()
    # A view is RandomFlip3D, then GlobalRotScaleTrans (rotate, scale, translate), written out here.
    v = views[3]
    xyz = np.random.default_rng(0).normal(size=(50, 3)) * 20
    flipped = xyz * [-1.0, -1.0, 1.0]
    c, s = np.cos(v.yaw), np.sin(v.yaw)
    rotated = np.stack([c * flipped[:, 0] - s * flipped[:, 1], s * flipped[:, 0] + c * flipped[:, 1],
                        flipped[:, 2]], 1)  # fmt: skip
    expected = rotated * v.scale + np.asarray(v.shift)
    points = np.concatenate([xyz, np.full((50, 1), 0.25)], 1).astype(np.float32)
    moved = v(Scan(points, None))
    np.testing.assert_allclose(moved.points[:, :3], expected, atol=1e-4)
    assert (moved.points[:, 3] == 0.25).all()
    with pytest.raises(ValueError, match="views >= 0"):
        tta_views(-1)


def test_owner_image_is_the_projections_nearest_point() -> None:
    rng = np.random.default_rng(0)
    xyz = (rng.normal(size=(4000, 3)) * [20, 20, 1]).astype(np.float32)
    xyz[100] = xyz[7] * 1.0  # an exact tie in one pixel: the lower index wins
    p = project_spherical(xyz, 16, 64, 3.0, -25.0)
    labels = torch.from_numpy(rng.integers(1, 20, size=len(xyz)))
    image = owner_image(labels, *(torch.from_numpy(a.astype(np.int64)) for a in (p.rows, p.cols)),
                        torch.from_numpy(p.depth), 16, 64)  # fmt: skip
    expected = np.where(p.index >= 0, labels.numpy()[np.maximum(p.index, 0)], 1)
    assert np.array_equal(image.numpy(), expected)


@pytest.mark.parametrize("net", [None, "ensemble"])
def test_identity_views_equal_no_tta_exactly(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, net: str | None
) -> None:
    plain = evaluate(
        run, net=net, out=tmp_path / "plain", write_predictions=True, num_workers=0, progress=False
    )
    monkeypatch.setattr(evaluate_module, "tta_views", lambda n, seed: (View(),) * n)
    same = evaluate(run, net=net, out=tmp_path / "tta", write_predictions=True, num_workers=0, progress=False,
                    tta=3)  # fmt: skip
    assert same["tta"]["views"] == [View().to_dict()] * 3 and plain["tta"] is None
    for level in ("point_knn", "point", "range_pixel"):
        assert same["levels"][level]["confusion_matrix"] == plain["levels"][level]["confusion_matrix"], level
    labels = sorted((tmp_path / "plain").rglob("*.label"))
    assert labels
    for path in labels:
        a = read_kitti_labels(path)[0]
        assert np.array_equal(
            a, read_kitti_labels(tmp_path / "tta" / path.relative_to(tmp_path / "plain"))[0]
        )
    assert len(np.unique(a)) > 3  # a net of many classes: the equality is not trivial


def test_identity_views_equal_no_tta_exactly_for_a_point_model(
    frnet_run: Path, synthetic_kitti: Path
) -> None:
    seg = Segmenter.from_checkpoint(frnet_run, device="cpu", net="ensemble")
    assert seg.pipeline.interpolation is not None and seg.views == ()
    points = val_points(synthetic_kitti, 1)
    points[:3, 0] = np.nan  # points without a pixel take the fallback class on both paths
    plain = seg.predict(points, return_probs=True)
    seg.views = (View(),) * 2
    same = seg.predict(points, return_probs=True)
    assert np.array_equal(plain.labels, same.labels) and len(np.unique(plain.labels)) > 2
    np.testing.assert_allclose(plain.probs, same.probs, atol=1e-6)
    assert seg.counts.interpolated > 0


def mirrored_scene(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A scan symmetric under y -> -y (its points off the x axis, then their mirror images), and each point's
    mirror partner."""
    half = points[np.abs(points[:, 1]) > 0.05]
    mirror = half * np.array([1, -1, 1, 1], np.float32)
    n = len(half)
    return np.concatenate([half, mirror]), np.concatenate([np.arange(n, 2 * n), np.arange(n)])


@pytest.mark.parametrize("model", ["fidnet", "frnet"])
def test_a_flip_view_of_a_symmetric_scene_gives_the_mirrored_prediction(
    run: Path, frnet_run: Path, synthetic_kitti: Path, model: str
) -> None:
    seg = Segmenter.from_checkpoint(run if model == "fidnet" else frnet_run, device="cpu", knn=False)
    # Without RangeInterpolation: the points it adds are not mirror-symmetric, so the flip would see another cloud.
    seg.pipeline = replace(seg.pipeline, interpolation=None)
    scene, partner = mirrored_scene(val_points(synthetic_kitti))
    plain = seg.predict(scene, return_probs=True)
    seg.views = (View(negate_y=True),)
    flipped = seg.predict(scene, return_probs=True)
    # Seen through the flip, each point stands where its partner stood: it takes the partner's prediction.
    if model == "fidnet":  # the same image, pixel for pixel
        assert np.array_equal(flipped.labels, plain.labels[partner])
    else:  # FRNet's frustum means sum the same points in another order: equal up to float rounding
        np.testing.assert_allclose(flipped.probs, plain.probs[partner], atol=1e-4)
        assert (flipped.labels == plain.labels[partner]).mean() > 0.999
    assert not np.array_equal(plain.labels, plain.labels[partner])  # the scene's halves are labelled apart


def test_eval_segmenter_and_infer_agree_and_record_the_views(run: Path, synthetic_kitti: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    result = evaluate(
        run, out=tmp_path / "eval", write_predictions=True, num_workers=0, progress=False, tta=2
    )
    assert result["tta"] == {"views": [v.to_dict() for v in tta_views(2, 0)], "seed": 0}
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["tta"] == result["tta"]
    scan = sorted((synthetic_kitti / "sequences" / "08" / "velodyne").glob("*.bin"))[0]
    written = read_kitti_labels(
        tmp_path / "eval" / "sequences" / "08" / "predictions" / f"{scan.stem}.label"
    )[0]
    seg = Segmenter.from_checkpoint(run, device="cpu", tta=2)
    assert np.array_equal(seg.predict(read_kitti_points(scan), raw_ids=True), written)
    no_tta = Segmenter.from_checkpoint(run, device="cpu").predict(read_kitti_points(scan), raw_ids=True)
    assert not np.array_equal(no_tta, written)  # the views changed some labels
    assert (
        infer_main([str(run), str(scan), "--out", str(tmp_path / "infer"), "--tta", "2", "--no-progress"])
        == 0
    )
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert summary["tta_views"] == result["tta"]["views"]
    assert np.array_equal(
        read_kitti_labels(tmp_path / "infer" / "predictions" / f"{scan.stem}.label")[0], written
    )


def test_bad_tta_values_are_refused_in_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert eval_main([str(run), "--tta", "-1", "--no-progress"]) == 2
    assert "--tta must be >= 0" in capsys.readouterr().err
    scan = tmp_path / "s.bin"
    np.zeros((10, 4), np.float32).tofile(scan)
    assert infer_main([str(run), str(scan), "--out", str(tmp_path / "o"), "--tta", "-2"]) == 2
    assert "--tta must be >= 0" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_interpolated_points_are_made_before_the_view_moves_them() -> None:
    rng = np.random.default_rng(1)
    xyz = (rng.normal(size=(3000, 3)) * [15, 15, 1]).astype(np.float32)
    scan = Scan(np.concatenate([xyz, rng.random((3000, 1), np.float32)], 1), None)
    image = SphericalImage(32, 256, 3.0, -25.0)
    geometry = Geometry(height=16, width=64, fov_up=3.0, fov_down=-25.0, rings=False)
    view = tta_views(2, seed=5)[1]
    encoding = InputEncoding.make("normalised", "kitti", (0.0,) * 5, (1.0,) * 5)
    sample = view_sample(scan, view, geometry, encoding, interpolated_points(scan, image), point_inputs=True)
    moved = view(interpolated_points(scan, image)).points  # interpolate, then move: the release's order
    p = project_spherical(moved, 16, 64, 3.0, -25.0)
    assert len(moved) > 0 and np.array_equal(sample["extra_points"].numpy(), moved[p.rows >= 0, :4])
    assert np.array_equal(sample["points"].numpy(), view(scan).points)
    assert (
        added_point_keys(interpolated_points(scan, image), geometry, view)["extra_points"].shape
        == sample["extra_points"].shape
    )


def test_tta_settings_out_of_range_are_refused_when_the_config_loads() -> None:
    with pytest.raises(ConfigError, match=r"eval\.tta: -1 is not allowed.*eval\.tta_seed: -2 is not allowed"):
        load_config(None, ["eval.tta=-1", "eval.tta_seed=-2"])
    assert load_config(None).eval.tta == 0  # off unless a config turns it on
