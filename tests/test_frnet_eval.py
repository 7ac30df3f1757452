"""Evaluation of point models (FRNet): every point labelled (the fallback for points without a pixel), the
ensemble's mean softmax, validate's point mIoU against a plain confusion matrix, and rangecps-eval on a tiny FRNet
run (no kNN, per-net and ensemble)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_runs import tiny

from rangecps import dist
from rangecps.data.build import DataBundle, build_data
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.sample import collate
from rangecps.device import precision
from rangecps.eval.evaluate import evaluate
from rangecps.eval.predict_points import (
    per_scan_forward,
    point_net_forward,
    segment_point_batch,
)
from rangecps.eval.runs import load_run
from rangecps.eval.validation import validate
from rangecps.io import read_kitti_points
from rangecps.models import FRNet, build_model
from rangecps.projection import project_spherical

pytestmark = pytest.mark.usefixtures("one_thread")

K = 20  # SemanticKITTI's train ids, ignore class 0 included
GRID = (64, 128)  # the tiny runs' range image (tests/tiny_runs.py)
CPU = torch.device("cpu")
FRNET = ("model.name=frnet", "model.width=0.125")


@pytest.fixture(scope="module")
def data(synthetic_kitti: Path) -> DataBundle:
    return build_data(tiny(synthetic_kitti, *FRNET), progress=False)


def val_scans(data: DataBundle) -> list[np.ndarray]:
    return [read_kitti_points(data.root / r.points) for r in data.index.split("val")]


def calibrated(seed: int, data: DataBundle) -> FRNet:
    """A tiny FRNet whose batch-norm statistics are measured on the validation scans (train-mode forwards): with
    the initial ones its predictions are nearly one class, which would make the label checks below weak."""
    net = build_model("frnet", 4, K, 0.125, seed=seed)
    assert isinstance(net, FRNet)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    pipeline = ScanPipeline.from_bundle(data)
    batch = collate([pipeline.sample(p, None, i, point_inputs=True) for i, p in enumerate(val_scans(data))])
    net.train()
    with torch.no_grad():
        net(batch["points"], batch["coors"], len(batch["num_points"]), GRID)
    return net.eval()


@pytest.fixture(scope="module")
def nets(data: DataBundle) -> list[FRNet]:
    return [calibrated(0, data), calibrated(1, data)]


def own_forward(net: FRNet, points: np.ndarray, pipeline: ScanPipeline) -> tuple[np.ndarray, torch.Tensor]:
    """Independently of the prediction path: which points have a pixel (projected here) and the net's logits
    for them, the scan run alone."""
    g = pipeline.geometry
    valid = np.isfinite(points).all(1) & (np.linalg.norm(np.nan_to_num(points[:, :3]), axis=1) > 0)
    proj = project_spherical(points[valid], g.height, g.width, g.fov_up, g.fov_down)
    coors = np.stack([np.zeros(valid.sum(), np.int64), proj.rows, proj.cols], 1)
    with torch.no_grad():
        logits = net(torch.from_numpy(points[valid]), torch.from_numpy(coors), 1, GRID)["point_logits"]
    return valid, logits


def test_every_point_is_labelled_and_points_without_a_pixel_take_the_scans_most_frequent_class(
    data: DataBundle, nets: list[FRNet]
) -> None:
    pipeline = ScanPipeline.from_bundle(data)
    clouds = val_scans(data)[:2]
    # Scan 0 gets two points without a pixel, between real ones: a NaN coordinate and zero range.
    bad = np.array([[np.nan, 1.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.5]], np.float32)
    clouds[0] = np.concatenate([clouds[0][:100], bad[:1], clouds[0][100:200], bad[1:], clouds[0][200:]])
    batch = collate([pipeline.sample(p, None, i, f"s{i}", point_inputs=True) for i, p in enumerate(clouds)])
    pred, scans = segment_point_batch(point_net_forward(nets[:1], None), batch, CPU, K, probs=True)
    assert pred.shape == (int(batch["point_valid"].sum()),)
    assert [s.without_pixel for s in scans] == [2, 0]
    for points, scan in zip(clouds, scans, strict=True):
        valid, logits = own_forward(nets[0], points, pipeline)
        expected = logits[:, 1:].argmax(1).numpy() + 1
        plain = scan.plain.numpy()
        assert plain.shape == (len(points),) and scan.voted is None and scan.labels is scan.plain
        assert len(np.unique(expected)) > 2  # varied predictions: the fallback below is a real choice
        # Each point's own prediction (a near-tie may go either way between batched and single-scan runs).
        top2 = logits[:, 1:].topk(2, 1).values
        decisive = ((top2[:, 0] - top2[:, 1]) > 1e-4).numpy()
        assert (plain[valid][decisive] == expected[decisive]).all()
        fill = np.bincount(plain[valid], minlength=K).argmax()
        assert (plain[~valid] == fill).all()
        assert fill == np.bincount(expected, minlength=K).argmax()
        assert fill != 1  # not what an empty scan gets (class 1), so the two rules are told apart
        # Probabilities: each point's softmax; without a pixel the mean over the scan's predicted points.
        probs = scan.probs.numpy()
        np.testing.assert_allclose(probs[valid], logits.softmax(1).numpy(), atol=1e-5)
        mean = np.tile(probs[valid].mean(0), (int((~valid).sum()), 1))
        np.testing.assert_allclose(probs[~valid], mean, rtol=1e-3)  # float32 sums over ~10^5 rows


def test_a_scan_without_any_pixel_is_labelled_class_1(data: DataBundle, nets: list[FRNet]) -> None:
    pipeline = ScanPipeline.from_bundle(data)
    empty = np.full((5, 4), np.nan, np.float32)
    batch = collate([pipeline.sample(val_scans(data)[0], None, 0, point_inputs=True),
                     pipeline.sample(empty, None, 1, point_inputs=True)])  # fmt: skip
    _, scans = segment_point_batch(point_net_forward(nets[:1], None), batch, CPU, K, probs=True)
    assert scans[1].plain.tolist() == [1] * 5 and scans[1].without_pixel == 5
    np.testing.assert_allclose(scans[1].probs.sum(1).numpy(), 1.0, atol=1e-6)
    assert (scans[1].probs[:, 0] == 0).all()
    # A batch without any pixel at all never reaches the network (FRNet refuses zero points).
    alone = collate([pipeline.sample(empty, None, 0, point_inputs=True)])
    _, scans = segment_point_batch(point_net_forward(nets[:1], None), alone, CPU, K)
    assert scans[0].plain.tolist() == [1] * 5


def test_ensemble_is_the_mean_softmax_of_both_nets(data: DataBundle, nets: list[FRNet]) -> None:
    pipeline = ScanPipeline.from_bundle(data)
    batch = collate(
        [pipeline.sample(p, None, i, point_inputs=True) for i, p in enumerate(val_scans(data)[:2])]
    )
    points, coors = batch["points"], batch["coors"]
    scores = point_net_forward(nets, None)(points, coors, 2, GRID)
    with torch.no_grad():
        each = [net(points, coors, 2, GRID)["point_logits"].softmax(1) for net in nets]
    torch.testing.assert_close(scores, (each[0] + each[1]) / 2)
    assert (scores - each[0]).abs().max() > 1e-3  # both nets count, not only the first
    _, scans = segment_point_batch(
        point_net_forward(nets, None), batch, CPU, K, probs=True, scores_are_probs=True
    )
    offsets = batch["point_offsets"].tolist()
    for b, scan in enumerate(scans):
        own = scores[offsets[b] : offsets[b + 1]]
        torch.testing.assert_close(scan.probs, own)  # every point of these scans has a pixel
        assert torch.equal(scan.plain, own[:, 1:].argmax(1) + 1)


def test_per_scan_forward_runs_each_scan_alone(data: DataBundle, nets: list[FRNet]) -> None:
    pipeline = ScanPipeline.from_bundle(data)
    batch = collate(
        [pipeline.sample(p, None, i, point_inputs=True) for i, p in enumerate(val_scans(data)[:2])]
    )
    seen = []

    def single(points: torch.Tensor, coors: torch.Tensor) -> torch.Tensor:
        seen.append((len(points), int(coors[:, 0].max())))
        return nets[0](points, coors, 1, GRID)["point_logits"]

    with torch.no_grad():
        out = per_scan_forward(single)(batch["points"], batch["coors"], 2, GRID)
        whole = nets[0](batch["points"], batch["coors"], 2, GRID)["point_logits"]
    assert seen == [(int(n), 0) for n in batch["point_counts"]]
    torch.testing.assert_close(out, whole, atol=1e-4, rtol=1e-4)


def plain_point_miou(net: FRNet, data: DataBundle) -> float:
    """Point mIoU of ``net`` on the validation split with a numpy confusion matrix, semantic-kitti-api's mean
    (every real class, an absent one counting 0): each scan alone, each point its own prediction, a point
    without a pixel the scan's most frequent one."""
    ds = data.dataset("val", point_inputs=True)
    cm = np.zeros((K, K), np.int64)
    for i in range(len(ds)):
        s = ds[i]
        valid = s["point_valid"].numpy()
        coors = torch.stack([torch.zeros_like(s["rows"]), s["rows"], s["cols"]], 1)[s["point_valid"]]
        with torch.no_grad():
            logits = net(s["points"][s["point_valid"]], coors, 1, GRID)["point_logits"]
        own = logits[:, 1:].argmax(1).numpy() + 1
        pred = np.full(len(valid), np.bincount(own, minlength=K).argmax())
        pred[valid] = own
        gt = s["point_label"].numpy()
        keep = gt > 0
        cm += np.bincount(gt[keep] * K + pred[keep], minlength=K * K).reshape(K, K)
    tp = np.diag(cm)[1:].astype(np.float64)
    union = cm.sum(0)[1:] + cm.sum(1)[1:] - np.diag(cm)[1:]
    return float((tp / (union + 1e-15)).mean())


def test_validate_scores_point_nets_on_points(data: DataBundle, nets: list[FRNet]) -> None:
    expected = [plain_point_miou(net, data) for net in nets]
    got = validate(list(nets), ("a", "b"), data, CPU, None, dist.DistInfo(), 1, 0)
    assert got["miou_a"] == pytest.approx(expected[0], abs=1e-12)
    assert got["miou_b"] == pytest.approx(expected[1], abs=1e-12)
    assert got["miou_a"] != got["miou_b"]
    assert all(net.training for net in nets)  # handed back in train mode, as training expects
    for net in nets:
        net.eval()


def test_validate_refuses_a_mix_of_point_and_image_nets(data: DataBundle, nets: list[FRNet]) -> None:
    image = build_model("fidnet", 6, K, 0.125, seed=0)
    with pytest.raises(ValueError, match="mix point and image models"):
        validate([nets[0], image], ("a", "b"), data, CPU, None, dist.DistInfo(), 1, 0)
    nets[0].eval()


# ------------------------------------------------------------------------------------------ rangecps-eval


@pytest.fixture(scope="module")
def frnet_run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rangecps.train import train

    out = tmp_path_factory.mktemp("frnet_eval") / "run"
    cfg = tiny(synthetic_kitti, *FRNET, "train.method=cps", "train.epochs=1", "train.max_steps=2")
    train(cfg, out, progress=False)
    return out


def test_rangecps_eval_scores_points_without_knn(frnet_run: Path, tmp_path: Path) -> None:
    from rangecps.cli import eval_main

    out = tmp_path / "ev"
    assert eval_main([str(frnet_run), "--out", str(out), "--knn", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "frnet" and m["point_model"] is True and m["knn"] is None
    assert set(m["levels"]) == {"point"} and m["headline"] == "point"
    assert "no kNN" in m["levels"]["point"]["description"]
    assert m["notes"] == ["--knn ignored: frnet is a point model and predicts every point itself"]
    assert m["levels"]["point"]["counted"] > 0 and m["points_without_pixel"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["knn"] is None and m["precision"]["channels_last"] is False  # as FRNet trains

    # The point level is validate's number for the same net and precision.
    run = load_run(frnet_run)
    data = build_data(run.cfg, progress=False)
    amp = precision(run.cfg.train.amp, run.cfg.train.channels_last, CPU).amp  # as training validates
    val = validate([run.nets[0]], ("a",), data, CPU, amp, dist.DistInfo(), 1, 0)
    assert m["levels"]["point"]["miou"] == pytest.approx(val["miou_a"], abs=1e-12)


def test_rangecps_eval_nets_and_ensemble_of_a_point_run(frnet_run: Path, tmp_path: Path) -> None:
    results = {
        net: evaluate(frnet_run, net=net, out=tmp_path / net, progress=False, num_workers=0)
        for net in ("a", "b", "ensemble")
    }
    for net, r in results.items():
        assert r["net"] == net and r["knn"] is None and set(r["levels"]) == {"point"}
    cms = {net: np.array(r["levels"]["point"]["confusion_matrix"]) for net, r in results.items()}
    assert cms["a"].sum() == cms["b"].sum() == cms["ensemble"].sum()
    assert not np.array_equal(cms["a"], cms["b"])  # two differently initialised nets


def test_real_nuscenes_scan_through_frnet_at_the_released_grid() -> None:
    """A real HDL-32E sweep on FRNet's nuScenes frustum grid (32x480, rows from the rings): every projected point
    gets finite logits, and RangeInterpolation at 32x1920 adds points in gaps only (fewer than the scan's)."""
    from rangecps.data.frnet_augment import range_interpolation
    from rangecps.io import Scan, read_nuscenes_points
    from rangecps.models import build_model
    from rangecps.projection import project_rings

    path = Path(__file__).resolve().parents[1].parent / "shared" / "real_scans"
    path = path / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"
    if not path.is_file():
        pytest.skip(f"real scan not available: {path}")
    points, ring = read_nuscenes_points(path)
    proj = project_rings(points[:, :3], ring, height=32, width=480)
    has = proj.rows >= 0
    coors = np.stack([np.zeros(int(has.sum()), np.int64), proj.rows[has], proj.cols[has]], 1)
    net = build_model("frnet", 4, 17, 0.125, seed=0).eval()
    with torch.no_grad():
        logits = net(torch.from_numpy(points[has]), torch.from_numpy(coors), 1, (32, 480))["point_logits"]
    assert logits.shape == (int(has.sum()), 17) and torch.isfinite(logits).all()
    assert has.sum() > 0.95 * len(points)  # a ring image places almost every point
    dense = range_interpolation(
        Scan(points=points, labels=None, ring=ring, meta={}),
        height=32,
        width=1920,
        fov_up=10.0,
        fov_down=-30.0,
    )
    added = len(dense.points) - len(points)
    assert 0 < added < len(points)
    assert np.array_equal(dense.points[: len(points)], points)
