"""FRNet-release augmentations (rangecps.data.frnet_augment) on small synthetic scans built here."""

import numpy as np
import pytest

from rangecps.data.frnet_augment import (
    KITTI_INSTANCE_CLASSES,
    NUSCENES_INSTANCE_CLASSES,
    frustum_mix,
    instance_copy,
    range_interpolation,
)
from rangecps.io import Scan
from rangecps.labels import load_label_map

H, W, UP, DOWN = 64, 512, 3.0, -25.0


def xyz_at(rows, cols, r, height=H, width=W, up=UP, down=DOWN, drow=0.5, dcol=0.5):
    """Points at (row + drow, col + dcol) of a spherical image (float64 math), range r."""
    rows, cols, r = (np.asarray(v, np.float64) for v in (rows, cols, r))
    pitch = np.radians(down + (1.0 - (rows + drow) / height) * (up - down))
    yaw = ((cols + dcol) / width * 2.0 - 1.0) * np.pi
    return np.stack(
        [r * np.cos(pitch) * np.cos(-yaw), r * np.cos(pitch) * np.sin(-yaw), r * np.sin(pitch)], axis=1
    )


def ref_rows(xyz, height=H, up=UP, down=DOWN):
    pitch = np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1))
    row = np.floor((1.0 - (pitch - np.radians(down)) / np.radians(up - down)) * height)
    return np.clip(row, 0, height - 1).astype(int)


def ref_cols(xyz, width=W):
    col = np.floor(0.5 * (-np.arctan2(xyz[:, 1], xyz[:, 0]) / np.pi + 1.0) * width)
    return np.clip(col, 0, width - 1).astype(int)


def make_scan(seed, n=3000, tag=0.0, height=H, width=W):
    """Points at pixel centres; intensity = tag + index identifies each point; random labels and rings."""
    g = np.random.default_rng(seed)
    rows, cols = g.integers(0, height, n), g.integers(0, width, n)
    pts = np.zeros((n, 4), np.float32)
    pts[:, :3] = xyz_at(rows, cols, g.uniform(2.0, 50.0, n), height, width)
    pts[:, 3] = tag + np.arange(n)
    return Scan(
        points=pts,
        ring=(height - 1 - rows).astype(np.int32),
        labels=g.integers(0, 20, n).astype(np.int64),
        meta={"frame": f"s{seed}"},
    )


def split_sources(out, a, b, tag_b):
    """Indices into a and b of the output's points (by intensity tag), checking points/labels/rings stayed put."""
    ids = out.points[:, 3].astype(np.int64)
    from_b = ids >= tag_b
    ia, ib = ids[~from_b], ids[from_b] - tag_b
    np.testing.assert_array_equal(out.points[~from_b], a.points[ia])
    np.testing.assert_array_equal(out.points[from_b], b.points[ib])
    np.testing.assert_array_equal(out.labels[~from_b], a.labels[ia])
    np.testing.assert_array_equal(out.labels[from_b], b.labels[ib])
    np.testing.assert_array_equal(out.ring[~from_b], a.ring[ia])
    np.testing.assert_array_equal(out.ring[from_b], b.ring[ib])
    assert len(set(ia)) == len(ia) and len(set(ib)) == len(ib)
    return set(ia.tolist()), set(ib.tolist())


def test_frustum_mix_vertical_bands_follow_release():
    a, b = make_scan(1), make_scan(2, tag=100000.0)
    seen = set()
    for seed in range(12):
        out = frustum_mix(a, b, np.random.default_rng(seed), p_vertical=1.0)
        info = out.meta["frustum_mix"]
        assert info["direction"] == "vertical" and out.meta["frame"] == "s1"
        bounds = np.asarray(info["row_bounds"])
        n = len(bounds) - 1
        seen.add(n)
        assert n in (3, 4, 5, 6)
        np.testing.assert_array_equal(bounds, np.linspace(0, H, n + 1).astype(np.int64))
        band_a = np.searchsorted(bounds, ref_rows(a.points[:, :3].astype(np.float64)), side="right") - 1
        band_b = np.searchsorted(bounds, ref_rows(b.points[:, :3].astype(np.float64)), side="right") - 1
        ia, ib = split_sources(out, a, b, 100000)
        assert ia == set(np.flatnonzero(band_a % 2 == 0).tolist())
        assert ib == set(np.flatnonzero(band_b % 2 == 1).tolist())
        # output is band by band
        rows = ref_rows(out.points[:, :3].astype(np.float64))
        assert (np.diff(np.searchsorted(bounds, rows, side="right")) >= 0).all()
    assert seen == {3, 4, 5, 6}


def test_frustum_mix_out_of_fov_points_clamp_to_edge_rows():
    a = make_scan(1, n=50)
    pts = np.zeros((2, 4), np.float32)
    pts[0, :3] = xyz_at([-5], [10], [10.0])[0]  # above fov_up -> row 0 (band 0, from a)
    pts[1, :3] = xyz_at([H + 5], [10], [10.0])[0]  # below fov_down -> row H - 1
    pts[:, 3] = [1000.0, 1001.0]
    b = Scan(points=pts, ring=np.zeros(2, np.int32), labels=np.array([3, 4]), meta={})
    for seed in range(8):
        out = frustum_mix(a, b, np.random.default_rng(seed), p_vertical=1.0)
        n = len(out.meta["frustum_mix"]["row_bounds"]) - 1
        ids = set(out.points[:, 3].astype(int).tolist())
        assert 1000 not in ids
        assert (1001 in ids) == ((n - 1) % 2 == 1)


def test_frustum_mix_horizontal_half_turn_from_b():
    a, b = make_scan(3), make_scan(4, tag=100000.0)
    starts = set()
    for seed in range(10):
        out = frustum_mix(a, b, np.random.default_rng(seed), p_vertical=0.0)
        start, end = out.meta["frustum_mix"]["col_range"]
        assert 0 <= start < W // 2 and end == start + W // 2
        starts.add(start)
        ca, cb = ref_cols(a.points[:, :3].astype(np.float64)), ref_cols(b.points[:, :3].astype(np.float64))
        ia, ib = split_sources(out, a, b, 100000)
        assert ia == set(np.flatnonzero((ca < start) | (ca >= end)).tolist())
        assert ib == set(np.flatnonzero((cb >= start) & (cb < end)).tolist())
        n_a = len(ia)
        assert (out.points[:n_a, 3] < 100000).all() and (out.points[n_a:, 3] >= 100000).all()
    assert len(starts) > 5


def test_frustum_mix_probabilities_and_determinism():
    a, b = make_scan(5, n=500), make_scan(6, n=500, tag=100000.0)
    assert frustum_mix(a, b, np.random.default_rng(0), p=0.0) is a
    directions = set()
    for seed in range(20):
        o1 = frustum_mix(a, b, np.random.default_rng(seed))
        o2 = frustum_mix(a, b, np.random.default_rng(seed))
        np.testing.assert_array_equal(o1.points, o2.points)
        np.testing.assert_array_equal(o1.labels, o2.labels)
        directions.add(o1.meta["frustum_mix"]["direction"])
    assert directions == {"vertical", "horizontal"}
    # no rings on one side: none on the output
    out = frustum_mix(a, Scan(points=b.points, labels=b.labels), np.random.default_rng(1))
    assert out.ring is None and out.labels.dtype == np.int64 and out.points.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_areas": ()}, "num_areas"),
        ({"num_areas": (0, 3)}, "num_areas"),
        ({"num_areas": (65,)}, "num_areas"),
        ({"fov_up": -1.0}, "fov"),
        ({"fov_down": 5.0}, "fov"),
        ({"width": 1}, "width"),
        ({"p": 1.5}, "p must"),
        ({"p_vertical": -0.1}, "p_vertical"),
    ],
)
def test_frustum_mix_rejects_bad_arguments(kwargs, match):
    a, b = make_scan(1, n=10), make_scan(2, n=10)
    with pytest.raises(ValueError, match=match):
        frustum_mix(a, b, np.random.default_rng(0), **kwargs)


def test_frustum_mix_needs_labels():
    a = make_scan(1, n=10)
    with pytest.raises(ValueError, match="no labels"):
        frustum_mix(a, Scan(points=a.points), np.random.default_rng(0))


def test_instance_copy_appends_whole_classes_in_order():
    scan, bank = make_scan(7, n=800), make_scan(8, n=800, tag=100000.0)
    classes = (5, 2, 19)
    out = instance_copy(scan, bank, classes, np.random.default_rng(0))
    n = len(scan.points)
    np.testing.assert_array_equal(out.points[:n], scan.points)
    np.testing.assert_array_equal(out.labels[:n], scan.labels)
    np.testing.assert_array_equal(out.ring[:n], scan.ring)
    want = np.concatenate([np.flatnonzero(bank.labels == c) for c in classes])
    np.testing.assert_array_equal(out.points[n:], bank.points[want])
    np.testing.assert_array_equal(out.labels[n:], bank.labels[want])
    np.testing.assert_array_equal(out.ring[n:], bank.ring[want])
    assert out.meta["frame"] == "s7" and out.meta["instance_copy"]["classes"] == [5, 2, 19]
    assert instance_copy(scan, bank, classes, np.random.default_rng(0), p=0.0) is scan
    a1 = instance_copy(scan, bank, classes, np.random.default_rng(3), p=0.5)
    a2 = instance_copy(scan, bank, classes, np.random.default_rng(3), p=0.5)
    assert len(a1.points) == len(a2.points)


def test_instance_copy_released_class_lists_by_name():
    kitti, nusc = load_label_map("semantickitti").names, load_label_map("nuscenes").names
    assert [kitti[c] for c in KITTI_INSTANCE_CLASSES] == [
        "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist", "motorcyclist",
        "other-ground", "trunk", "pole", "traffic-sign",
    ]  # fmt: skip
    assert [nusc[c] for c in NUSCENES_INSTANCE_CLASSES] == [
        "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
        "traffic_cone", "trailer", "truck",
    ]  # fmt: skip


@pytest.mark.parametrize("classes", [(), (0, 2), (2, 2), (1.5,)])
def test_instance_copy_rejects_bad_classes(classes):
    scan = make_scan(1, n=10)
    with pytest.raises(ValueError, match="classes"):
        instance_copy(scan, scan, classes, np.random.default_rng(0))


def test_instance_copy_needs_labels():
    scan = make_scan(1, n=10)
    with pytest.raises(ValueError, match="no labels"):
        instance_copy(scan, Scan(points=scan.points), (2,), np.random.default_rng(0))
    with pytest.raises(ValueError, match="p must"):
        instance_copy(scan, scan, (2,), np.random.default_rng(0), p=-1)


def grid_scan(cells, height, width, r=10.0, up=UP, down=DOWN):
    """One point per (row, col, label) cell at the pixel centre, intensity = index."""
    rows, cols, labels = (np.array([c[i] for c in cells]) for i in range(3))
    pts = np.zeros((len(cells), 4), np.float32)
    pts[:, :3] = xyz_at(rows, cols, np.full(len(cells), r), height, width, up, down)
    pts[:, 3] = np.arange(len(cells))
    return Scan(points=pts, ring=rows.astype(np.int32), labels=labels.astype(np.int64), meta={"frame": "g"})


def test_range_interpolation_fills_single_gaps_only():
    h, w = 4, 16
    kw = {"height": h, "width": w}
    cells = [
        (0, 0, 7), (0, 2, 7),  # single gap at col 1, same label -> 7; point 0 must count as occupied
        (1, 3, 4), (1, 5, 9),  # single gap, labels differ -> 0
        (2, 6, 0), (2, 8, 0),  # both ignore -> 0
        (3, 10, 5), (3, 13, 5),  # double gap: nothing
        (0, 15, 2), (2, 15, 2), (2, 0, 2),  # edge columns: no wrap-around
        (1, 0, 3), (1, 1, 3), (1, 2, 3),  # full row segment: nothing
    ]  # fmt: skip
    scan = grid_scan(cells, h, w)
    out = range_interpolation(scan, **kw)
    n = len(cells)
    np.testing.assert_array_equal(out.points[:n], scan.points)
    np.testing.assert_array_equal(out.labels[:n], scan.labels)
    assert out.meta["num_points_before_interpolation"] == n
    new = out.points[n:]
    assert len(new) == 3
    np.testing.assert_array_equal(ref_rows(new[:, :3].astype(np.float64), h), [0, 1, 2])
    np.testing.assert_array_equal(ref_cols(new[:, :3].astype(np.float64), w), [1, 4, 7])
    np.testing.assert_array_equal(out.labels[n:], [7, 0, 0])
    np.testing.assert_allclose(new, (scan.points[[0, 2, 4]] + scan.points[[1, 3, 5]]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(out.ring[n:], [0, 1, 2])

    # every new point lands in a pixel that was empty
    def pixels(p):
        xyz = p[:, :3].astype(np.float64)
        return set((ref_rows(xyz, h) * w + ref_cols(xyz, w)).tolist())

    before, after = pixels(scan.points), pixels(new)
    assert not before & after
    # unlabeled scan: points only
    bare = range_interpolation(Scan(points=scan.points), np.random.default_rng(0), **kw)
    assert bare.labels is None and bare.ring is None
    np.testing.assert_array_equal(bare.points, out.points)


def test_range_interpolation_uses_nearest_point_of_each_pixel():
    h, w = 2, 8
    scan = grid_scan([(0, 2, 3), (0, 4, 3)], h, w)
    far = np.zeros((1, 4), np.float32)
    far[0, :3] = xyz_at([0], [2], [30.0], h, w)[0]
    far[0, 3] = 99.0
    scan = Scan(points=np.concatenate([far, scan.points]), labels=np.array([8, 3, 3]))
    out = range_interpolation(scan, height=h, width=w)
    np.testing.assert_allclose(out.points[3], (scan.points[1] + scan.points[2]) / 2, rtol=1e-6)
    assert out.labels[3] == 3


def release_loop(scan, h, w):
    """The released sequential scan over pixels (with pixel occupancy = holds any point), for comparison."""
    rows = ref_rows(scan.points[:, :3].astype(np.float64), h)
    cols = ref_cols(scan.points[:, :3].astype(np.float64), w)
    depth = np.linalg.norm(scan.points[:, :3].astype(np.float64), axis=1)
    img = np.zeros((h, w, 4), np.float32)
    lab = np.zeros((h, w), np.int64)
    mask = np.zeros((h, w), bool)
    for i in np.lexsort((-np.arange(len(depth)), -depth)):  # far to near; ties to the lower index
        img[rows[i], cols[i]], lab[rows[i], cols[i]], mask[rows[i], cols[i]] = (
            scan.points[i],
            scan.labels[i],
            True,
        )
    pts, labels = [], []
    for y in range(h):
        for x in range(1, w - 1):
            if not mask[y, x] and mask[y, x - 1] and mask[y, x + 1]:
                mask[y, x] = True
                img[y, x] = (img[y, x - 1] + img[y, x + 1]) / 2
                lab[y, x] = lab[y, x - 1] if lab[y, x - 1] == lab[y, x + 1] else 0
                pts.append(img[y, x])
                labels.append(lab[y, x])
    return np.array(pts, np.float32).reshape(-1, 4), np.array(labels, np.int64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_range_interpolation_matches_sequential_release_scan(seed):
    h, w = 8, 32
    g = np.random.default_rng(seed)
    n = 250
    rows, cols = g.integers(0, h, n), g.integers(0, w, n)
    pts = np.zeros((n, 4), np.float32)
    pts[:, :3] = xyz_at(rows, cols, g.uniform(2, 40, n), h, w)
    pts[:, 3] = g.uniform(0, 1, n)
    scan = Scan(points=pts, labels=g.integers(0, 4, n).astype(np.int64))
    want_pts, want_labels = release_loop(scan, h, w)
    out = range_interpolation(scan, height=h, width=w)
    assert len(want_pts) > 10
    np.testing.assert_array_equal(out.points[n:], want_pts)
    np.testing.assert_array_equal(out.labels[n:], want_labels)
    again = range_interpolation(scan, height=h, width=w)
    np.testing.assert_array_equal(again.points, out.points)


def test_range_interpolation_keeps_points_without_a_pixel():
    scan = grid_scan([(0, 1, 2), (0, 3, 2)], 2, 8)
    pts = np.concatenate([scan.points, np.array([[0, 0, 0, 5], [np.nan, 0, 0, 5]], np.float32)])
    out = range_interpolation(Scan(points=pts, labels=np.array([2, 2, 1, 1])), height=2, width=8)
    assert len(out.points) == 5 and out.labels[4] == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"height": 0}, {"width": 0}, {"fov_up": -2.0}, {"fov_down": 1.0}, {"fov_up": 95.0}, {"height": 2.5}],
)
def test_range_interpolation_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        range_interpolation(make_scan(0, n=10), **kwargs)
    with pytest.raises(ValueError, match="Scan"):
        range_interpolation(np.zeros((3, 4), np.float32))
