"""FRNet's FrustumMix, InstanceCopy and RangeInterpolation as options of the train-time augmentation
(rangecps.data.scan_mixing, wired through DataBundle.dataset and RangeDataset), on the synthetic KITTI root."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rangecps.config import AugmentConfig, ConfigError, load_config
from rangecps.data import DATASETS, read_scan
from rangecps.data.augment import build_augment
from rangecps.data.build import DataBundle
from rangecps.data.dataset import RangeDataset
from rangecps.data.frnet_augment import (
    KITTI_INSTANCE_CLASSES,
    NUSCENES_INSTANCE_CLASSES,
    _angles,
    _cols,
    _rows,
    range_interpolation,
)
from rangecps.data.index import NUSCENES_GEOMETRY
from rangecps.data.prep import prepare
from rangecps.data.scan_mixing import SphericalImage, build_mixing
from rangecps.io import Scan
from rangecps.labels import load_label_map


@pytest.fixture(scope="module")
def kitti(synthetic_kitti: Path, tmp_path_factory: pytest.TempPathFactory) -> DataBundle:
    """The synthetic KITTI root as a run sees it (3 train scans), at the native 64x2048 image, no cache."""
    cls = DATASETS["synthetic_kitti"]
    out = tmp_path_factory.mktemp("prep")
    index, stats, _ = prepare(cls, synthetic_kitti, out, progress=False)
    lmap = load_label_map(cls.label_map)
    return DataBundle(cls, synthetic_kitti, index, stats, lmap, cls.geometry, prep_dir=out)


@pytest.fixture(scope="module")
def raw(kitti: DataBundle) -> list[Scan]:
    """The train scans as read, in record order; no two share a point (so a point names its scan)."""
    scans = [read_scan(kitti.root, r, "kitti", kitti.label_map) for r in kitti.index.split("train")]
    keys = [set(map(bytes, s.points)) for s in scans]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    return scans


@pytest.fixture(scope="module")
def lookups(raw: list[Scan]) -> list[dict[bytes, int]]:
    """Point (as bytes) -> its index, for each scan of ``raw``."""
    return [{bytes(p): k for k, p in enumerate(s.points)} for s in raw]


def still(**kw) -> AugmentConfig:
    """No point transform at all, so a sample's points are exactly the file's (and any mixing's)."""
    return AugmentConfig(flip=False, rotate=False, scale=(1.0, 1.0), **kw)


def where_from(points: np.ndarray, lookup: dict[bytes, int]) -> np.ndarray:
    """(M,) index into a scan (its ``lookups`` entry) of each of ``points`` (M, 4), -1 for a point not in it."""
    return np.array([lookup.get(bytes(p), -1) for p in points], np.int64)


def sample_points(ds: RangeDataset, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    s = ds[key]
    return s["points"].numpy(), s["point_label"].numpy()


def assert_same_samples(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_options_off_give_the_samples_of_before(kitti: DataBundle) -> None:
    # Default point transforms plus the column roll, which draws after them: any extra draw would show.
    cfg = AugmentConfig(roll=True)
    before = RangeDataset(
        kitti.root, kitti.index.split("train"), "kitti", kitti.geometry, kitti.label_map, kitti.stats,
        build_augment(cfg), seed=7, roll=True,
    )  # fmt: skip
    off = AugmentConfig(
        roll=True,
        frustum_mix_areas=[2],
        instance_classes=[1],
        frustum_fov=(5.0, -20.0),
        range_interpolation=False,
    )
    for aug in (cfg, off):
        ds = kitti.dataset("train", augment=aug, seed=7)
        assert ds.mixing is None
        for key in ((0, 0), (2, 5)):
            assert_same_samples(ds[key], before[key])


def counts(size: int, *bins: np.ndarray) -> list[np.ndarray]:
    """(size,) number of points in each row (or column), for each array of points' rows (or columns)."""
    return [np.bincount(b, minlength=size) for b in bins]


def region_split(count: list[np.ndarray], from_b: np.ndarray) -> bool:
    """Whether the kept points are exactly a's outside and b's inside the region ``from_b`` (bool per row or
    column); ``count``: per row or column, a's points, a's kept, b's points, b's kept (:func:`counts`)."""
    a_all, a_kept, b_all, b_kept = count
    return bool((a_kept == np.where(from_b, 0, a_all)).all() and (b_kept == np.where(from_b, b_all, 0)).all())


def test_frustum_mix_takes_frustum_regions_of_a_second_scan(
    kitti: DataBundle, raw: list[Scan], lookups: list[dict[bytes, int]]
) -> None:
    ds = kitti.dataset("train", augment=still(frustum_mix=1.0), seed=1, point_inputs=True)
    assert ds.mixing.frustum_image == SphericalImage(64, 2048, 3.0, -25.0)
    a = raw[0]
    # Rows and columns as frustum_mix bins them (float32, exactly its arithmetic): tested in test_frnet_augment.
    rows = [_rows(_angles(s.points)[2], 64, 3.0, -25.0) for s in raw]
    cols = [_cols(_angles(s.points)[1], 2048) for s in raw]
    mixed, directions = 0, set()
    for draw in range(8):
        points, labels = sample_points(ds, (0, draw))
        others = [where_from(points, lookup) for lookup in lookups]
        ia = others[0]
        if (ia >= 0).all():  # mixed with itself (the release draws from the whole dataset too)
            continue
        j = next(j for j in (1, 2) if ((ia >= 0) | (others[j] >= 0)).all())
        ib, b = others[j], raw[j]
        from_a = ia >= 0
        assert len(np.unique(ia[from_a])) == from_a.sum() and len(np.unique(ib[~from_a])) == (~from_a).sum()
        np.testing.assert_array_equal(labels[from_a], a.labels[ia[from_a]])  # labels follow their points
        np.testing.assert_array_equal(labels[~from_a], b.labels[ib[~from_a]])
        ka, kb = ia[from_a], ib[~from_a]
        by_row = counts(64, rows[0], rows[0][ka], rows[j], rows[j][kb])
        by_col = counts(2048, cols[0], cols[0][ka], cols[j], cols[j][kb])
        # vertical: n bands at linspace(0, 64, n + 1), the odd ones from b; horizontal: a half turn from b
        band = [
            np.searchsorted(np.linspace(0, 64, n + 1).astype(int), np.arange(64), "right") - 1
            for n in range(7)
        ]
        vertical = [n for n in (3, 4, 5, 6) if region_split(by_row, band[n] % 2 == 1)]
        col = np.arange(2048)
        horizontal = [s for s in range(1024) if region_split(by_col, (col >= s) & (col < s + 1024))]
        assert len(vertical) + len(horizontal) >= 1, draw
        directions.add("vertical" if vertical else "horizontal")
        mixed += 1
    assert mixed >= 3 and directions == {"vertical", "horizontal"}


def test_mixing_is_reproducible_per_seed_and_draw(kitti: DataBundle) -> None:
    cfg = AugmentConfig(frustum_mix=1.0, instance_copy=1.0, range_interpolation=True, roll=True)
    ds = kitti.dataset("train", augment=cfg, seed=3, with_points=False)
    again = kitti.dataset("train", augment=cfg, seed=3, with_points=False)
    first = ds[(1, 4)]
    assert_same_samples(first, ds[(1, 4)])
    assert_same_samples(first, again[(1, 4)])
    assert not torch.equal(first["input"], ds[(1, 5)]["input"])  # another draw, another mix
    other_seed = kitti.dataset("train", augment=cfg, seed=4, with_points=False)
    assert not torch.equal(first["input"], other_seed[(1, 4)]["input"])


def test_unlabeled_dataset_never_mixes(kitti: DataBundle) -> None:
    plain = kitti.dataset("train", labels=False, augment=AugmentConfig(roll=True), seed=2, point_inputs=True)
    mixing = AugmentConfig(roll=True, frustum_mix=1.0, instance_copy=1.0)
    unl = kitti.dataset("train", labels=False, augment=mixing, seed=2, point_inputs=True)
    assert unl.mixing is None
    assert_same_samples(unl[(1, 3)], plain[(1, 3)])
    # RangeInterpolation needs no labels: an unlabeled scan gets it (and only it), as the release's pipeline does.
    interp = replace(mixing, range_interpolation=True)
    unl = kitti.dataset("train", labels=False, augment=interp, seed=2, point_inputs=True)
    assert unl.mixing is not None and unl.mixing.frustum_mix == unl.mixing.instance_copy == 0.0
    got, want = unl[(1, 3)], plain[(1, 3)]
    n = want["num_points"]
    assert got["num_points"] > n
    assert torch.equal(got["points"][:n], want["points"])
    assert int(got["point_label"].abs().sum()) == 0


@pytest.mark.parametrize("classes", [[], [1]])
def test_instance_copy_adds_only_points_of_the_instance_classes(
    kitti: DataBundle, raw: list[Scan], lookups: list[dict[bytes, int]], classes: list[int]
) -> None:
    want = tuple(classes) or KITTI_INSTANCE_CLASSES  # [] is the release's list (car not in it)
    ds = kitti.dataset("train", augment=still(instance_copy=1.0, instance_classes=classes), point_inputs=True)
    assert ds.mixing.instance_classes == want
    target = raw[1]
    n = len(target.points)
    sources = set()
    for draw in range(4):
        points, labels = sample_points(ds, (1, draw))
        np.testing.assert_array_equal(points[:n], target.points)  # the scan itself first, untouched
        np.testing.assert_array_equal(labels[:n], target.labels)
        added, added_labels = points[n:], labels[n:]
        assert len(added) > 0 and np.isin(added_labels, want).all()
        # Every point of those classes of one scan of the dataset, labels attached.
        j = next(j for j, lookup in enumerate(lookups) if (where_from(added, lookup) >= 0).all())
        idx = where_from(added, lookups[j])
        np.testing.assert_array_equal(added_labels, raw[j].labels[idx])
        assert sorted(idx.tolist()) == np.flatnonzero(np.isin(raw[j].labels, want)).tolist()
        sources.add(j)
    assert len(sources) >= 2


def test_range_interpolation_adds_points_on_the_native_image(kitti: DataBundle, raw: list[Scan]) -> None:
    small = replace(
        kitti, geometry=replace(kitti.geometry, width=512)
    )  # a network image narrower than the sensor's
    ds = small.dataset("train", augment=still(range_interpolation=True), point_inputs=True)
    assert ds.mixing.interpolation == SphericalImage(64, 2048, 3.0, -25.0)
    assert ds.mixing.frustum_image == SphericalImage(64, 512, 3.0, -25.0)
    points, labels = sample_points(ds, (2, 0))
    want = range_interpolation(raw[2], height=64, width=2048, fov_up=3.0, fov_down=-25.0)
    assert len(points) > len(raw[2].points)
    np.testing.assert_array_equal(points, want.points)
    np.testing.assert_array_equal(labels, want.labels)
    assert ds[(2, 0)]["input"].shape == (6, 64, 512)


def test_mixing_turns_the_cache_off(kitti: DataBundle, tmp_path: Path) -> None:
    args = (kitti.root, kitti.index.split("train"), "kitti", kitti.geometry, kitti.label_map, kitti.stats)
    aug = AugmentConfig()
    assert RangeDataset(*args, build_augment(aug), cache_dir=tmp_path).cache_dir == tmp_path
    for on in ({"frustum_mix": 0.5}, {"instance_copy": 1.0}, {"range_interpolation": True}):
        mixing = build_mixing(AugmentConfig(**on), kitti.label_map, kitti.geometry, kitti.geometry)
        assert RangeDataset(*args, build_augment(aug), cache_dir=tmp_path, mixing=mixing).cache_dir is None


def test_nuscenes_release_settings() -> None:
    cfg = AugmentConfig(
        frustum_mix=1.0, instance_copy=1.0, range_interpolation=True, frustum_fov=(10.0, -30.0)
    )
    run = replace(NUSCENES_GEOMETRY, width=480)
    m = build_mixing(cfg, load_label_map("nuscenes"), run, NUSCENES_GEOMETRY)
    assert m.instance_classes == NUSCENES_INSTANCE_CLASSES
    assert m.frustum_image == SphericalImage(32, 480, 10.0, -30.0)
    assert m.interpolation == SphericalImage(32, 1920, 10.0, -30.0)
    assert m.frustum_areas == (3, 4, 5, 6)
    default_fov = build_mixing(
        replace(cfg, frustum_fov=None), load_label_map("nuscenes"), run, NUSCENES_GEOMETRY
    )
    assert default_fov.interpolation == SphericalImage(32, 1920, 10.67, -30.67)


def test_nuscenes_sample_keeps_rings(synthetic_nuscenes: Path, tmp_path: Path) -> None:
    cls = DATASETS["synthetic_nuscenes"]
    index, stats, _ = prepare(cls, synthetic_nuscenes, tmp_path, progress=False)
    data = DataBundle(cls, synthetic_nuscenes, index, stats, load_label_map(cls.label_map), cls.geometry)
    cfg = AugmentConfig(frustum_mix=1.0, instance_copy=1.0, range_interpolation=True)
    ds = data.dataset("train", augment=cfg, seed=0, point_inputs=True)
    plain = data.dataset("train", augment=AugmentConfig(), seed=0, point_inputs=True)
    s = ds[(0, 1)]  # projected by rings: every added point carries one
    assert s["input"].shape == (6, 32, 1920)
    assert s["num_points"] != plain[(0, 1)]["num_points"]
    assert bool(s["point_valid"].any())


@pytest.mark.parametrize(
    "setting, value",
    [
        ("frustum_mix", "1.5"),
        ("frustum_mix", "-0.1"),
        ("instance_copy", "2"),
        ("frustum_mix_areas", "[]"),
        ("frustum_mix_areas", "[0, 3]"),
        ("instance_classes", "[0]"),
        ("instance_classes", "[2, 2]"),
        ("frustum_fov", "[-1.0, -25.0]"),
        ("frustum_fov", "[3.0, 5.0]"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"data.augment.{setting}") as e:
        load_config(None, [f"data.augment.{setting}={value}"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "cfg, setting",
    [
        (AugmentConfig(frustum_mix=1.0, frustum_mix_areas=[3, 65]), "frustum_mix_areas"),
        (AugmentConfig(instance_copy=1.0, instance_classes=[2, 20]), "instance_classes"),
    ],
)
def test_settings_the_dataset_checks(cfg: AugmentConfig, setting: str) -> None:
    cls = DATASETS["semantickitti"]
    with pytest.raises(ValueError, match=f"data.augment.{setting}") as e:
        build_mixing(cfg, load_label_map(cls.label_map), cls.geometry, cls.geometry)
    assert "\n" not in str(e.value)


def test_second_scans_get_the_point_transforms(kitti: DataBundle, raw: list[Scan]) -> None:
    # Rotation only: a pasted car keeps each point's horizontal range and height, not its x, y (the release puts
    # the second scan through its pre_transform: flip, rotate, scale, translate).
    cfg = AugmentConfig(flip=False, scale=(1.0, 1.0), instance_copy=1.0, instance_classes=[1])
    ds = kitti.dataset("train", augment=cfg, seed=5, point_inputs=True)
    n = len(raw[0].points)
    points, labels = sample_points(ds, (0, 0))
    added = points[n:].astype(np.float64)
    assert len(added) > 0 and (labels[n:] == 1).all()

    def shape(p: np.ndarray) -> np.ndarray:
        return np.sort(np.stack([np.hypot(p[:, 0], p[:, 1]), p[:, 2]], 1), axis=0)

    cars = [s.points[s.labels == 1].astype(np.float64) for s in raw]
    j = next(
        j
        for j, c in enumerate(cars)
        if len(c) == len(added) and np.allclose(shape(c), shape(added), atol=1e-3)
    )
    assert not np.allclose(np.sort(added[:, 0]), np.sort(cars[j][:, 0]), atol=1e-2)
