"""Dataset indexes, prep checks, range-image samples, augmentations and the semi-supervised loader."""

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rangecps.config import AugmentConfig
from rangecps.data import DATASETS
from rangecps.data.augment import (
    Compose,
    MinDistance,
    PointDropout,
    PointNoise,
    RandomFlip,
    RandomRotate,
    RandomScale,
    RandomTranslate,
    build_augment,
)
from rangecps.data.dataset import RangeDataset
from rangecps.data.loader import RepeatedShardSampler, semi_supervised_loader
from rangecps.data.prep import DatasetProblems, load_prepared, prepare
from rangecps.data.sample import CHANNELS, collate
from rangecps.io import Scan, write_kitti_labels
from rangecps.labels import load_label_map


def test_config_datasets_match_classes() -> None:
    from typing import get_args

    from rangecps.config import Dataset

    assert set(get_args(Dataset)) == set(DATASETS)


def test_prepare_kitti_writes_index_stats_and_nested_splits(synthetic_kitti: Path, tmp_path: Path) -> None:
    index, stats, _ = prepare(DATASETS["synthetic_kitti"], synthetic_kitti, tmp_path, progress=False)
    assert index.ids("train") == ["00/000000", "00/000001", "00/000002"]
    assert index.ids("val") == ["08/000000", "08/000001", "08/000002"]
    assert (tmp_path / "index.json").is_file() and (tmp_path / "stats.json").is_file()
    assert len(stats.mean) == 5 and all(s > 0 for s in stats.std)
    lists = [
        set((tmp_path / "splits" / f"synthetic_kitti_{p}pct.txt").read_text().split())
        for p in (1, 10, 20, 50)
    ]
    assert all(a <= b for a, b in itertools.pairwise(lists))
    again, stats2 = load_prepared(DATASETS["synthetic_kitti"], synthetic_kitti, tmp_path)
    assert again.splits == index.splits and stats2 == stats


def test_scribble_dataset_trains_on_scribbles(synthetic_kitti: Path) -> None:
    index = DATASETS["synthetic_scribblekitti"].build_index(synthetic_kitti)
    assert all("/scribbles/" in r.labels for r in index.split("train"))
    assert all("/labels/" in r.labels for r in index.split("val"))


def test_broken_dataset_reports_every_problem(synthetic_kitti: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(synthetic_kitti, root)
    seq = root / "sequences" / "00"
    scan = seq / "velodyne" / "000000.bin"
    scan.write_bytes(scan.read_bytes()[:-6])  # truncated
    (seq / "labels" / "000001.label").unlink()  # missing label file
    n = (seq / "velodyne" / "000002.bin").stat().st_size // 16
    write_kitti_labels(seq / "labels" / "000002.label", np.full(n - 1, 40, np.uint16))  # count mismatch
    shutil.rmtree(root / "sequences" / "08" / "labels")  # missing folder
    with pytest.raises(DatasetProblems) as err:
        prepare(DATASETS["synthetic_kitti"], root, tmp_path / "out", progress=False)
    msg = str(err.value)
    assert "000000.bin: size" in msg and "not a whole number" in msg
    assert "000001.label: KITTI label file not found" in msg
    assert "000002.label" in msg and "labels but the scan has" in msg
    assert "08/labels: missing folder" in msg
    assert not (tmp_path / "out" / "index.json").exists()


def test_unknown_label_ids_are_reported(synthetic_kitti: Path, tmp_path: Path) -> None:
    root = tmp_path / "unknown"
    shutil.copytree(synthetic_kitti, root)
    label = root / "sequences" / "00" / "labels" / "000000.label"
    raw = np.fromfile(label, dtype=np.uint32)
    raw[:5] = 77
    raw.tofile(label)
    with pytest.raises(DatasetProblems, match=r"000000.label: unknown label ids 77 \(5 points\)"):
        prepare(DATASETS["synthetic_kitti"], root, tmp_path / "out", progress=False)


def test_dataset_item_shapes_and_dtypes(synthetic_kitti: Path, tmp_path: Path) -> None:
    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, synthetic_kitti, tmp_path, progress=False)
    ds = RangeDataset(
        synthetic_kitti,
        index.split("train"),
        cls.file_format,
        cls.geometry,
        load_label_map(cls.label_map),
        stats,
        build_augment(AugmentConfig()),
        seed=0,
    )
    item = ds[0]
    n = item["num_points"]
    assert item["input"].shape == (len(CHANNELS), 64, 2048) and item["input"].dtype == torch.float32
    assert item["label"].shape == (64, 2048) and item["label"].dtype == torch.int64
    assert item["mask"].dtype == torch.bool and item["mask"].float().mean() > 0.5
    assert item["rows"].shape == item["cols"].shape == item["point_label"].shape == (n,)
    assert item["depth"].dtype == torch.float32
    assert torch.equal(item["input"][5], item["mask"].float())
    assert (item["input"][:5][:, ~item["mask"]] == 0).all()
    valid = item["rows"] >= 0
    # The label image and the per-point labels agree for points that won their pixel.
    win = item["label"][item["rows"][valid], item["cols"][valid]]
    assert (win == item["point_label"][valid]).float().mean() > 0.7
    # Same seed/epoch/index -> same augmentation; another epoch -> another one.
    assert torch.equal(ds[0]["input"], item["input"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["input"], item["input"])
    batch = collate([ds[0], ds[1]])
    assert batch["input"].shape == (2, 6, 64, 2048)
    n_max = int(batch["num_points"].max())
    assert batch["rows"].shape == (2, n_max)
    short = int(torch.argmin(batch["num_points"]))
    assert (batch["rows"][short, batch["num_points"][short] :] == -1).all()


def test_nuscenes_dataset_uses_rings(synthetic_nuscenes: Path, tmp_path: Path) -> None:
    cls = DATASETS["synthetic_nuscenes"]
    index, stats, _ = prepare(cls, synthetic_nuscenes, tmp_path, progress=False)
    assert len(index.split("val")) == 4 and len(index.split("train")) == 2
    ds = RangeDataset(
        synthetic_nuscenes,
        index.split("val"),
        cls.file_format,
        cls.geometry,
        load_label_map(cls.label_map),
        stats,
    )
    item = ds[0]
    assert item["input"].shape == (6, 32, 1920)
    assert item["label"].max() <= 16 and item["label"].max() > 0


def test_augmentations_keep_labels_attached() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(500, 4)).astype(np.float32) * 10
    labels = rng.integers(1, 20, size=500)
    pts[:, 3] = labels  # intensity carries the label: no transform changes intensity
    scan = Scan(points=pts, ring=np.arange(500, dtype=np.int32) % 32, labels=labels)
    for t in (
        RandomRotate(),
        RandomFlip(),
        RandomScale(0.9, 1.1),
        RandomScale(1.0, 1.05, "up_or_inverse", z=False),
        RandomTranslate(0.1),
        PointNoise(0.05),
        PointDropout(0.3),
        MinDistance(5.0),
    ):
        out = t(scan, np.random.default_rng(1))
        np.testing.assert_array_equal(out.points[:, 3], out.labels)
        assert len(out.ring) == len(out.points)
    rot = RandomRotate()(scan, np.random.default_rng(2))
    np.testing.assert_allclose(
        np.linalg.norm(rot.points[:, :2], axis=1), np.linalg.norm(pts[:, :2], axis=1), rtol=1e-5
    )
    np.testing.assert_array_equal(rot.points[:, 2], pts[:, 2])
    assert not np.allclose(rot.points[:, 0], pts[:, 0])


def test_compose_fuses_affine_transforms_into_the_same_geometry() -> None:
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(300, 4)).astype(np.float32) * 20
    scan = Scan(points=pts, labels=rng.integers(1, 20, size=300))
    steps = (
        PointDropout(0.2),
        RandomFlip(),
        RandomScale(1.0, 1.05, "up_or_reciprocal"),
        RandomRotate(),
        RandomTranslate(0.2),
    )
    for seed in range(4):  # seeds with and without flips
        fused = Compose(steps)(scan, np.random.default_rng(seed))
        one_by_one, draws = scan, np.random.default_rng(seed)
        for t in steps:
            one_by_one = t(one_by_one, draws)
        np.testing.assert_allclose(fused.points, one_by_one.points, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(fused.labels, one_by_one.labels)
        assert fused.points.dtype == np.float32


def test_sampler_shards_one_global_stream() -> None:
    full = RepeatedShardSampler(10, 24, seed=5)
    shards = [list(RepeatedShardSampler(10, 24, seed=5, rank=r, world=2)) for r in range(2)]
    stream = list(full)
    assert shards[0] == stream[0::2] and shards[1] == stream[1::2]
    assert [pos for _, pos in stream] == list(range(24))  # keys carry their place in the global stream
    stream = [i for i, _ in stream]
    assert sorted(stream[:10]) == list(range(10))  # each pass is a permutation
    full.set_epoch(1)
    assert [i for i, _ in full] != stream


def test_semi_supervised_loader_covers_unlabeled_once(synthetic_kitti: Path, tmp_path: Path) -> None:
    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, synthetic_kitti, tmp_path, progress=False)
    recs = index.split("train") + index.split("val")
    lmap = load_label_map(cls.label_map)
    lab = RangeDataset(synthetic_kitti, recs[:1], cls.file_format, cls.geometry, lmap, stats)
    unl = RangeDataset(synthetic_kitti, recs[1:], cls.file_format, cls.geometry, None, stats)
    loader = semi_supervised_loader(lab, unl, 1, 1, num_workers=0, seed=0)
    pairs = list(loader)
    assert len(loader) == len(pairs) == 5
    assert sorted(int(u["index"][0]) for _, u in pairs) == list(range(5))
    assert all(int(b["index"][0]) == 0 for b, _ in pairs)
    assert all(int(u["point_label"].abs().sum()) == 0 for _, u in pairs)


def test_cache_equals_projection_and_augments_exactly(synthetic_kitti: Path, tmp_path: Path) -> None:
    from rangecps.data.augment import Compose
    from rangecps.data.cache import augment_cached, build_cache, cache_file, read_cached
    from rangecps.data.index import read_scan
    from rangecps.data.sample import project_scan
    from rangecps.projection import gather_channels

    cls = DATASETS["synthetic_kitti"]
    index, stats, _ = prepare(cls, synthetic_kitti, tmp_path, progress=False)
    lmap = load_label_map(cls.label_map)
    assert build_cache(cls, synthetic_kitti, index, lmap, tmp_path / "cache", progress=False) == 6
    recs = index.split("val")
    plain = RangeDataset(synthetic_kitti, recs, cls.file_format, cls.geometry, lmap, stats)
    cached = RangeDataset(
        synthetic_kitti, recs, cls.file_format, cls.geometry, lmap, stats, cache_dir=tmp_path / "cache"
    )
    a, b = plain[1], cached[1]
    for key in ("input", "label", "mask", "rows", "cols", "depth", "point_label"):
        assert torch.equal(a[key], b[key]), key
    # The released encoding and the column roll read the cache the same way as the points.
    kw = {"encoding": "released", "roll": True}
    plain = RangeDataset(synthetic_kitti, recs, cls.file_format, cls.geometry, lmap, stats, **kw)
    cached = RangeDataset(
        synthetic_kitti, recs, cls.file_format, cls.geometry, lmap, stats, cache_dir=tmp_path / "cache", **kw
    )
    a, b = plain[2], cached[2]
    for key in ("input", "label", "mask", "rows", "cols", "depth", "point_label"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6, msg=key)

    # Each image-space augmentation equals projecting the transformed points.
    scan = read_scan(synthetic_kitti, recs[0], cls.file_format, lmap)
    width = cls.geometry.width
    # Seed 2 draws both flips (0.26, 0.30 < 0.5) and a rotation by 2 pi * 1715 / 2048.
    for transform in (RandomRotate(), RandomFlip(), RandomScale(0.9, 1.1)):
        rng = np.random.default_rng(2)
        c = augment_cached(
            read_cached(cache_file(tmp_path / "cache", recs[0].scan_id)), Compose((transform,)), rng
        )
        draw = np.random.default_rng(2)
        pts = scan.points.copy()
        if isinstance(transform, RandomRotate):
            yaw = 2 * np.pi * int(draw.integers(width)) / width
            x, y = pts[:, 0].copy(), pts[:, 1].copy()
            pts[:, 0], pts[:, 1] = np.cos(yaw) * x - np.sin(yaw) * y, np.sin(yaw) * x + np.cos(yaw) * y
        elif isinstance(transform, RandomFlip):
            flip_y, flip_x = draw.random(2) < 0.5
            assert flip_x and flip_y
            pts[:, 0] *= -1 if flip_x else 1
            pts[:, 1] *= -1 if flip_y else 1
        else:
            pts[:, :3] *= np.float32(draw.uniform(0.9, 1.1))
        moved = Scan(points=pts, labels=scan.labels)
        proj = project_scan(moved, cls.geometry)
        expected = gather_channels(pts, proj)
        same = (c.channels[5] > 0) == proj.mask
        assert same.mean() > 0.999, transform
        both = same & proj.mask
        np.testing.assert_allclose(c.channels[:, both], expected[:, both], atol=2e-3, rtol=1e-4)
        assert (c.cols == proj.cols).mean() > 0.999


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_flags_points_with_a_bad_xyz_or_intensity(dtype: type) -> None:
    from rangecps.data.sample import non_finite

    rng = np.random.default_rng(0)
    points = rng.normal(size=(1000, 5)).astype(dtype)  # column 4 (e.g. a ring) is not checked
    for value in (np.nan, np.inf, -np.inf):
        rows = rng.choice(1000, 40, replace=False)
        points[rows, rng.integers(0, 5, 40)] = value
    expected = [not all(np.isfinite(float(v)) for v in row[:4]) for row in points]
    assert non_finite(points).tolist() == expected
    assert non_finite(points[::3, :4]).tolist() == expected[::3]  # strided views are read as given
    assert 0 < sum(expected) < 120
