"""Evaluation-time RangeInterpolation of a point model (FRNet) trained with it, as the FRNet release evaluates: the
network sees each scan densified by the same RangeInterpolation, every per-point output covers exactly the scan's
own points in file order, and the interpolated points are neither labelled nor scored. Checked in the batches
(the points are exactly those ``range_interpolation`` adds), in ``Segmenter.predict``, ``rangecps-eval``, validation
and the ONNX export; runs trained without the option, and image models, are left as they were."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_runs import tiny

from rangecps import dist
from rangecps.checkpoint import load_checkpoint
from rangecps.config import Config
from rangecps.data.build import DataBundle, build_data, eval_interpolation
from rangecps.data.frnet_augment import range_interpolation
from rangecps.data.index import read_scan
from rangecps.data.pipeline import ScanPipeline
from rangecps.data.point_batch import original_rows
from rangecps.data.sample import collate
from rangecps.deploy import Segmenter
from rangecps.device import precision
from rangecps.eval.predict_points import segment_point_batch
from rangecps.eval.runs import load_run
from rangecps.io import Scan, read_kitti_points
from rangecps.projection import project_spherical

pytestmark = pytest.mark.usefixtures("one_thread")

K = 20
GRID = (64, 128)
FRNET = ("model.name=frnet", "model.width=0.125")
INTERP = "data.augment.range_interpolation=true"
RELEASED = {"height": 64, "width": 2048, "fov_up": 3.0, "fov_down": -25.0}  # KITTI: the full-resolution image


def config(root: Path, *extra: str) -> Config:
    return tiny(root, *FRNET, INTERP, *extra)


@pytest.fixture(scope="module")
def data(synthetic_kitti: Path) -> DataBundle:
    return build_data(config(synthetic_kitti), progress=False)


@pytest.fixture(scope="module")
def run(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rangecps.train import train

    out = tmp_path_factory.mktemp("frnet_interp") / "run"
    train(config(synthetic_kitti, "train.method=sup_only", "train.max_steps=2"), out, progress=False)
    return out


def val_files(root: Path) -> list[Path]:
    return sorted((root / "sequences" / "08" / "velodyne").glob("*.bin"))


def added(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independently of the evaluation path: the points ``range_interpolation`` (released settings) adds to a
    KITTI scan that get a pixel of the tiny runs' 64x128 image, with that pixel's row and col."""
    dense = range_interpolation(Scan(points), **RELEASED)
    extra = dense.points[len(points) :]
    proj = project_spherical(extra, GRID[0], GRID[1], 3.0, -25.0)
    keep = proj.rows >= 0
    return extra[keep], proj.rows[keep], proj.cols[keep]


def own_pixels(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(valid (N,) bool, coors (P, 3))`` of a scan's own points on the tiny runs' image, batch index 0."""
    proj = project_spherical(points, GRID[0], GRID[1], 3.0, -25.0)
    valid = proj.rows >= 0
    return valid, np.stack([np.zeros(valid.sum(), np.int64), proj.rows[valid], proj.cols[valid]], 1)


# ------------------------------------------------------------------------------------------ samples, batches


def test_evaluation_datasets_carry_exactly_the_points_range_interpolation_adds(data: DataBundle) -> None:
    assert data.interpolation is not None and vars(data.interpolation) == RELEASED  # not the 64x128 grid
    ds = data.dataset("val", point_inputs=True, interpolate=True)
    for i, record in enumerate(ds.records):
        scan = read_scan(data.root, record, "kitti", data.label_map)
        s = ds[i]
        extra, rows, cols = added(scan.points)
        assert len(extra) > 100  # the synthetic scans have gaps to fill
        np.testing.assert_array_equal(s["extra_points"].numpy(), extra)
        np.testing.assert_array_equal(s["extra_rows"].numpy(), rows)
        np.testing.assert_array_equal(s["extra_cols"].numpy(), cols)
        # Every per-point key covers the scan's own N points, as read, in file order.
        n = len(scan.points)
        assert s["num_points"] == n and s["point_valid"].shape == (n,)
        np.testing.assert_array_equal(s["points"].numpy(), scan.points)
        np.testing.assert_array_equal(s["point_label"].numpy(), scan.labels)
    # Training reads the scans as before: no evaluation-time points, and batches without point_extra.
    train = data.dataset("train", augment=config(data.root).data.augment, seed=0, point_inputs=True)
    assert train.interpolation is None and train.mixing is not None
    batch = collate([train[0]])
    assert "extra_points" not in train[0] and "point_extra" not in batch
    assert batch["points"].shape[0] == int(batch["point_valid"].sum()) == int(batch["point_offsets"][-1])


def test_a_batch_places_each_scans_interpolated_points_after_its_own(data: DataBundle) -> None:
    pipeline = ScanPipeline.from_bundle(data)
    clouds = [read_kitti_points(p) for p in val_files(data.root)[:2]]
    clouds[0] = np.concatenate([clouds[0][:50], np.full((1, 4), np.nan, np.float32), clouds[0][50:]])
    batch = collate([pipeline.sample(p, None, i, point_inputs=True) for i, p in enumerate(clouds)])
    counts, extra = batch["point_counts"].tolist(), batch["point_extra"].tolist()
    assert batch["point_offsets"].tolist() == [0, counts[0] + extra[0], sum(counts) + sum(extra)]
    assert counts == [len(clouds[0]) - 1, len(clouds[1])] == batch["point_valid"].sum(1).tolist()
    keep = original_rows(batch)
    assert int(keep.sum()) == sum(counts) and int((~keep).sum()) == sum(extra)
    for b, cloud in enumerate(clouds):
        start, end = batch["point_offsets"][b : b + 2].tolist()
        valid, coors = own_pixels(cloud)
        extra_points, rows, cols = added(cloud[np.isfinite(cloud).all(1)])
        assert extra[b] == len(extra_points) > 0
        own, rest = slice(start, start + counts[b]), slice(start + counts[b], end)
        np.testing.assert_array_equal(batch["points"][own].numpy(), cloud[valid])
        np.testing.assert_array_equal(batch["points"][rest].numpy(), extra_points)
        np.testing.assert_array_equal(batch["coors"][own, 1:].numpy(), coors[:, 1:])
        np.testing.assert_array_equal(batch["coors"][rest, 1:].numpy(), np.stack([rows, cols], 1))
        assert (batch["coors"][start:end, 0] == b).all()
        assert keep[own].all() and not keep[rest].any()


def test_released_settings_and_who_gets_them(synthetic_kitti: Path) -> None:
    # Only point models trained with the option: not FRNet without it, not an image model with it.
    assert eval_interpolation(tiny(synthetic_kitti, *FRNET)) is None
    assert eval_interpolation(tiny(synthetic_kitti, INTERP)) is None
    assert vars(eval_interpolation(config(synthetic_kitti, "data.augment.frustum_fov=[2.0,-24.0]"))) == {
        **RELEASED,
        "fov_up": 2.0,
        "fov_down": -24.0,
    }
    nuscenes = tiny(synthetic_kitti, *FRNET, INTERP, "data.dataset=synthetic_nuscenes", "data.height=32")
    image = eval_interpolation(nuscenes)
    assert image is not None and (image.height, image.width) == (32, 1920)  # the release's 32x1920
    # A pipeline without it is stored as before (no key); one with it round-trips.
    plain = ScanPipeline.from_bundle(build_data(tiny(synthetic_kitti, *FRNET), progress=False))
    assert "interpolation" not in plain.to_dict() and ScanPipeline.from_dict(plain.to_dict()) == plain
    sample = plain.sample(read_kitti_points(val_files(synthetic_kitti)[0]), point_inputs=True)
    assert not any(k.startswith("extra_") for k in sample)
    dense = replace(plain, interpolation=image)
    assert ScanPipeline.from_dict(dense.to_dict()) == dense


# ------------------------------------------------------------------------------------------ prediction


def test_segmenter_feeds_the_densified_scan_and_labels_the_original_points(
    run: Path, synthetic_kitti: Path
) -> None:
    seg = Segmenter.from_checkpoint(run, device="cpu", amp="off")
    assert seg.pipeline.interpolation is not None and vars(seg.pipeline.interpolation) == RELEASED
    fed: list[torch.Tensor] = []
    forward = seg.forward

    def spy(
        points: torch.Tensor, coors: torch.Tensor, batch_size: int, grid: tuple[int, int]
    ) -> torch.Tensor:
        fed.append(torch.cat([points, coors.float()], 1))
        return forward(points, coors, batch_size, grid)

    seg.forward = spy
    plain = Segmenter.from_checkpoint(run, device="cpu", amp="off")
    plain.pipeline = replace(plain.pipeline, interpolation=None)
    net = load_run(run).nets[0].float().eval()
    changed = 0.0
    for path in val_files(synthetic_kitti):
        points = read_kitti_points(path)
        # The scan in reverse order: labels follow the points given, whatever their order.
        for cloud in (points, points[::-1].copy()):
            out = seg.predict(cloud, return_probs=True)
            assert out.labels.shape == (len(cloud),) and out.probs.shape == (len(cloud), K)
            valid, coors = own_pixels(cloud)
            extra, rows, cols = added(cloud)
            dense_coors = np.concatenate([coors, np.stack([np.zeros_like(rows), rows, cols], 1)])
            dense_points = np.concatenate([cloud[valid], extra])
            # What the network saw: the scan's points with a pixel, then the interpolated ones.
            np.testing.assert_array_equal(fed[-1].numpy(), np.concatenate([dense_points, dense_coors], 1))
            with torch.no_grad():
                logits = net(torch.from_numpy(dense_points), torch.from_numpy(dense_coors), 1, GRID)
            mine = logits["point_logits"][: int(valid.sum())]  # the own points' rows, extras dropped
            np.testing.assert_allclose(out.probs[valid], mine.softmax(1).numpy(), atol=1e-5)
            top2 = mine[:, 1:].topk(2, 1).values
            decisive = ((top2[:, 0] - top2[:, 1]) > 1e-4).numpy()
            np.testing.assert_array_equal(
                out.labels[valid][decisive], mine[:, 1:].argmax(1).numpy()[decisive] + 1
            )
            # The interpolated points change what the network says about the scan's own points.
            without = plain.predict(cloud, return_probs=True)
            changed = max(changed, float(np.abs(without.probs - out.probs).max()))
    assert changed > 1e-3
    assert seg.counts.interpolated == 2 * sum(
        len(added(read_kitti_points(p))[0]) for p in val_files(synthetic_kitti)
    )
    assert plain.counts.interpolated == 0


def test_rangecps_eval_writes_what_segmenter_predicts_and_scores_the_original_points(
    run: Path, synthetic_kitti: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rangecps.cli import eval_main

    out = tmp_path / "ev"
    assert eval_main([str(run), "--out", str(out), "--write-predictions", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    files = val_files(synthetic_kitti)
    assert m["range_interpolation"] is True
    assert m["interpolated_points"] == sum(len(added(read_kitti_points(p))[0]) for p in files)
    # Written labels: every original point, exactly what Segmenter.predict gives (rangecps-infer's path).
    seg = Segmenter.from_checkpoint(run, device="cpu")
    data = build_data(load_run(run).cfg, progress=False)
    cm = np.zeros((K, K), np.int64)
    for path, record in zip(files, data.index.split("val"), strict=True):
        points = read_kitti_points(path)
        written = np.fromfile(out / "sequences" / "08" / "predictions" / f"{path.stem}.label", np.uint32)
        assert written.shape == (len(points),)
        np.testing.assert_array_equal(seg.predict(points, raw_ids=True), written & 0xFFFF)
        gt = read_scan(data.root, record, "kitti", data.label_map).labels
        pred = seg.predict(points)
        keep = gt > 0
        cm += np.bincount(gt[keep] * K + pred[keep], minlength=K * K).reshape(K, K)
    # The metrics count the original points' labels and nothing else.
    np.testing.assert_array_equal(np.array(m["levels"]["point"]["confusion_matrix"]), cm)
    assert m["levels"]["point"]["counted"] == int(cm.sum())

    # Validation scores the same densified scans: the same number, and its batches carry the extra points.
    import rangecps.eval.validation as validation

    seen: list[int] = []

    def spy(forward: Any, batch: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        seen.append(int(batch["point_extra"].sum()) if "point_extra" in batch else -1)
        return segment_point_batch(forward, batch, *args, **kwargs)

    monkeypatch.setattr(validation, "segment_point_batch", spy)
    r = load_run(run)
    amp = precision(r.cfg.train.amp, r.cfg.train.channels_last, torch.device("cpu")).amp  # as evaluated
    val = validation.validate(r.nets[:1], ("a",), data, torch.device("cpu"), amp, dist.DistInfo(), 1, 0)
    assert sum(seen) == m["interpolated_points"] and min(seen) > 0
    assert val["miou_a"] == pytest.approx(m["levels"]["point"]["miou"], abs=1e-12)


def test_a_pipeline_stored_before_the_option_was_recorded_takes_it_from_the_config(
    run: Path, tmp_path: Path
) -> None:
    state = load_checkpoint(run / "last.pt")
    assert state["derived"]["pipeline"]["interpolation"] == RELEASED  # recorded by training
    del state["derived"]["pipeline"]["interpolation"]
    torch.save(state, tmp_path / "old.pt")
    seg = Segmenter.from_checkpoint(tmp_path / "old.pt", device="cpu")
    assert seg.pipeline.interpolation is not None and vars(seg.pipeline.interpolation) == RELEASED


def test_export_check_feeds_the_interpolated_points_and_compares_the_original_ones(
    run: Path, synthetic_kitti: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from rangecps.deploy.export import export

    files = val_files(synthetic_kitti)
    meta = export(run, tmp_path / "m.onnx", check_scans=2)
    assert meta["range_interpolation"] is True and meta["pipeline"]["interpolation"] == RELEASED
    assert "RangeInterpolation" in meta["preprocessing"] and "interpolated" in meta["postprocessing"]
    c = meta["check"]
    assert c["points"] == sum(len(read_kitti_points(p)) for p in files[:2])  # the scans' own points only
    assert c["interpolated_points"] == sum(len(added(read_kitti_points(p))[0]) for p in files[:2])
    assert c["agreement"] >= 0.9999 and c["max_abs_diff"] <= 1e-3
    points = read_kitti_points(files[2])
    onnx_seg = Segmenter.from_onnx(tmp_path / "m.onnx")
    assert (
        onnx_seg.pipeline.interpolation == Segmenter.from_checkpoint(run, device="cpu").pipeline.interpolation
    )
    got = onnx_seg.predict(points, return_probs=True)
    ref = Segmenter.from_checkpoint(run, device="cpu", amp="off").predict(points, return_probs=True)
    assert got.labels.shape == (len(points),) and onnx_seg.counts.interpolated > 0
    # float32 sums in another order (ONNX's scatters against torch's) can flip a near-tie in a frustum's max and
    # move a few points' probabilities by up to ~1e-3 (13 of 127,000 points once in CI); every other point agrees
    off = np.abs(got.probs - ref.probs).max(axis=1) > 1e-4
    assert off.mean() <= 1e-3 and (got.labels == ref.labels).mean() >= 0.9999
