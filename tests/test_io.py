"""Scan I/O: round trips, the official record layouts, and clear errors on bad files."""

from pathlib import Path

import numpy as np
import pytest

from rangecps import io
from rangecps.atomic import atomic_write

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def test_kitti_points_roundtrip(tmp_path: Path) -> None:
    pts = np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32)
    io.write_kitti_points(tmp_path / "a.bin", pts)
    assert (tmp_path / "a.bin").stat().st_size == 100 * 16
    np.testing.assert_array_equal(io.read_kitti_points(tmp_path / "a.bin"), pts)


def test_kitti_labels_pack_semantic_low_instance_high(tmp_path: Path) -> None:
    sem = np.array([10, 40, 252, 0], dtype=np.uint16)
    inst = np.array([3, 0, 65535, 7], dtype=np.uint16)
    io.write_kitti_labels(tmp_path / "a.label", sem, inst)
    raw = np.fromfile(tmp_path / "a.label", dtype="<u4")
    np.testing.assert_array_equal(raw, sem.astype(np.uint32) | (inst.astype(np.uint32) << 16))
    s, i = io.read_kitti_labels(tmp_path / "a.label", num_points=4)
    np.testing.assert_array_equal(s, sem)
    np.testing.assert_array_equal(i, inst)
    assert s.dtype == np.uint16 and i.dtype == np.uint16


def test_nuscenes_roundtrip_and_ring(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(64, 4)).astype(np.float32)
    ring = rng.integers(0, 32, size=64).astype(np.int32)
    io.write_nuscenes_points(tmp_path / "s.pcd.bin", pts, ring)
    raw = np.fromfile(tmp_path / "s.pcd.bin", dtype=np.float32).reshape(-1, 5)
    np.testing.assert_array_equal(raw[:, 4], ring.astype(np.float32))
    p, r = io.read_nuscenes_points(tmp_path / "s.pcd.bin")
    np.testing.assert_array_equal(p, pts)
    np.testing.assert_array_equal(r, ring)
    io.write_lidarseg(tmp_path / "l.bin", np.arange(64) % 32)
    assert io.read_lidarseg(tmp_path / "l.bin", num_points=64).dtype == np.uint8


def test_truncated_scan_names_file(tmp_path: Path) -> None:
    f = tmp_path / "000000.bin"
    f.write_bytes(b"\0" * 18)
    with pytest.raises(io.ScanFormatError, match=r"000000\.bin.*not a whole number"):
        io.read_kitti_points(f)


def test_label_count_mismatch(tmp_path: Path) -> None:
    io.write_kitti_labels(tmp_path / "x.label", np.zeros(5, np.uint16))
    with pytest.raises(io.ScanFormatError, match=r"x\.label: 5 labels but the scan has 6 points"):
        io.read_kitti_labels(tmp_path / "x.label", num_points=6)
    io.write_lidarseg(tmp_path / "y.bin", np.zeros(3))
    with pytest.raises(io.ScanFormatError, match="3 labels but the scan has 4 points"):
        io.read_lidarseg(tmp_path / "y.bin", num_points=4)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(io.ScanFormatError, match=r"nope\.bin: KITTI point file not found"):
        io.read_kitti_points(tmp_path / "nope.bin")


def test_bad_ring_is_reported(tmp_path: Path) -> None:
    data = np.zeros((3, 5), np.float32)
    data[1, 4] = 40
    data.tofile(tmp_path / "r.pcd.bin")
    with pytest.raises(io.ScanFormatError, match="1 points have a ring index"):
        io.read_nuscenes_points(tmp_path / "r.pcd.bin")


def test_nan_points_are_kept(tmp_path: Path) -> None:
    pts = np.ones((3, 4), np.float32)
    pts[1, 0] = np.nan
    io.write_kitti_points(tmp_path / "n.bin", pts)
    back = io.read_kitti_points(tmp_path / "n.bin")
    assert back.shape == (3, 4) and np.isnan(back[1, 0])


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_scan_contract() -> None:
    with pytest.raises(ValueError, match="float32"):
        io.Scan(points=np.zeros((2, 4), np.float64))
    with pytest.raises(ValueError, match="labels"):
        io.Scan(points=np.zeros((2, 4), np.float32), labels=np.zeros(3, np.int64))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared (real scans) is absent in a user's clone")
def test_real_scans_read() -> None:
    kitti = io.read_kitti_points(SHARED / "real_scans" / "kitti_object_000008_fov.bin")
    assert kitti.shape == (17238, 4)
    pts, ring = io.read_nuscenes_points(SHARED / "real_scans" / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin")
    assert pts.shape == (34688, 4)
    np.testing.assert_array_equal(np.bincount(ring, minlength=32), np.full(32, 1084))
