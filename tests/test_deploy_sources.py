"""Scan sources for inference: every format round-trips exactly, folders, names, bags, PointCloud2 decoding,
one-line errors that name the file."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bags import write_bag

from rangecps import io
from rangecps.deploy.sources import InputScan, decode_pointcloud2, iter_scans


def _points(n: int, seed: int = 0) -> np.ndarray:
    pts = np.random.default_rng(seed).normal(scale=10, size=(n, 4)).astype(np.float32)
    pts[:, 3] = np.abs(pts[:, 3])
    return pts


def _ring(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 100).integers(0, 32, size=n).astype(np.int64)


def _one_line_error(exc: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


# ------------------------------------------------------------------------------------------- PointCloud2 helpers


# ------------------------------------------------------------------------------------------------------- files


def test_kitti_files_roundtrip_in_sorted_folder_order(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        io.write_kitti_points(tmp_path / f"{i:06d}.bin", _points(50 + i, i))
    scans = list(iter_scans([tmp_path]))
    assert [s.name for s in scans] == ["000000", "000001", "000002"]
    for i, scan in enumerate(scans):
        np.testing.assert_array_equal(scan.points, _points(50 + i, i))
        assert scan.points.dtype == np.float32 and scan.ring is None and scan.stamp_ns is None
        assert (scan.kind, scan.source) == ("kitti", str(tmp_path / f"{i:06d}.bin"))


def test_nuscenes_keeps_ring_and_raw_intensity(tmp_path: Path) -> None:
    pts, ring = _points(64), _ring(64)
    pts[:, 3] = np.arange(64) * 4.0  # 0-255 as stored by nuScenes
    path = tmp_path / "n008__LIDAR_TOP__1533151603547590.pcd.bin"
    io.write_nuscenes_points(path, pts, ring)
    (scan,) = iter_scans([path])
    assert (scan.name, scan.kind) == ("n008__LIDAR_TOP__1533151603547590", "nuscenes")
    np.testing.assert_array_equal(scan.points, pts)
    np.testing.assert_array_equal(scan.ring, ring)
    assert scan.ring.dtype == np.int64


@pytest.mark.parametrize("cols", [3, 4, 5, 6])
def test_npy_columns(tmp_path: Path, cols: int) -> None:
    data = np.concatenate([_points(40)[:, :4], _ring(40)[:, None], np.ones((40, 1))], axis=1)[:, :cols]
    np.save(tmp_path / "cloud.npy", data.astype(np.float64 if cols == 6 else np.float32))
    (scan,) = iter_scans([tmp_path / "cloud.npy"])
    expected = np.zeros((40, 4), np.float32)
    expected[:, : min(cols, 4)] = data[:, :4]
    np.testing.assert_array_equal(scan.points, expected)
    if cols >= 5:
        np.testing.assert_array_equal(scan.ring, _ring(40))
    else:
        assert scan.ring is None


@pytest.mark.parametrize("ext", ["pcd", "ply"])
def test_open3d_formats_keep_intensity_ring_and_nan(tmp_path: Path, ext: str) -> None:
    o3d = pytest.importorskip("open3d")
    pts, ring = _points(30), _ring(30)
    pts[3, :3] = np.nan  # a missing return stays a point
    cloud = o3d.t.geometry.PointCloud()
    cloud.point.positions = o3d.core.Tensor(np.ascontiguousarray(pts[:, :3]))
    cloud.point.intensity = o3d.core.Tensor(np.ascontiguousarray(pts[:, 3:]))
    cloud.point.ring = o3d.core.Tensor(ring.astype(np.uint16)[:, None])
    o3d.t.io.write_point_cloud(str(tmp_path / f"a.{ext}"), cloud)
    bare = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(pts[:, :3])))
    o3d.t.io.write_point_cloud(str(tmp_path / f"b.{ext}"), bare)
    full, plain = iter_scans([tmp_path])
    assert (full.name, full.kind, plain.name) == ("a", ext, "b")
    np.testing.assert_array_equal(full.points, pts)
    np.testing.assert_array_equal(full.ring, ring)
    np.testing.assert_array_equal(plain.points[:, :3], pts[:, :3])
    assert not plain.points[:, 3].any() and plain.ring is None


# -------------------------------------------------------------------------------------------------------- bags


def test_ros2_folder_bag_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    msgs = [(_points(24, i), _ring(24, i), 1_700_000_000_123_456_789 + i * 100_000_000) for i in range(3)]
    write_bag(tmp_path / "drive", {"/velodyne_points": msgs})
    scans = list(iter_scans([tmp_path / "drive"]))
    assert [s.name for s in scans] == [f"velodyne_points_{i:06d}_{m[2]}" for i, m in enumerate(msgs)]
    for i, (scan, (pts, ring, stamp)) in enumerate(zip(scans, msgs, strict=True)):
        np.testing.assert_array_equal(scan.points, pts)
        np.testing.assert_array_equal(scan.ring, ring)
        assert (scan.stamp_ns, scan.kind, scan.source) == (
            stamp,
            "bag",
            f"{tmp_path / 'drive'}:/velodyne_points#{i}",
        )


def test_ros2_storage_file_and_ros1_bag(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    msgs = [(_points(16, 5), _ring(16, 5), 42_000_000_007)]
    write_bag(tmp_path / "m", {"/points": msgs}, storage="MCAP")
    write_bag(tmp_path / "r1.bag", {"/points": msgs}, ros=1)
    (mcap,) = iter_scans([tmp_path / "m" / "m.mcap"])  # a lone storage file, not its folder
    (ros1,) = iter_scans([tmp_path / "r1.bag"])
    for scan in (mcap, ros1):
        assert (scan.name, scan.stamp_ns) == ("points_000000_42000000007", 42_000_000_007)
        np.testing.assert_array_equal(scan.points, msgs[0][0])
        np.testing.assert_array_equal(scan.ring, msgs[0][1])


def test_topic_autopick_choice_and_errors(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    one = [(_points(8, 1), _ring(8, 1), 10)]
    two = [(_points(8, 2), _ring(8, 2), 20)]
    write_bag(tmp_path / "single", {"/lidar": one, "/chatter": "hello"})  # a non-cloud topic is not counted
    write_bag(tmp_path / "double", {"/front": one, "/rear": two})
    (scan,) = iter_scans([tmp_path / "single"])
    assert scan.name == "lidar_000000_10"
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / "double"]))
    _one_line_error(exc, str(tmp_path / "double"), "/front", "/rear")
    (rear,) = iter_scans([tmp_path / "double"], topic="/rear")
    np.testing.assert_array_equal(rear.points, two[0][0])
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / "double"], topic="/top"))
    _one_line_error(exc, "'/top'", "/front, /rear")


def test_organised_nan_cloud_with_padding_keeps_every_point(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    pts, ring = _points(4 * 6, 3), _ring(4 * 6, 3)
    pts[[0, 7, 23], :3] = np.nan  # organised clouds mark missing returns with NaN
    write_bag(tmp_path / "org", {"/os": [(pts, ring, 99)]}, height=4, point_step=32, row_pad=12)
    (scan,) = iter_scans([tmp_path / "org"])
    assert scan.points.shape == (24, 4)
    np.testing.assert_array_equal(scan.points, pts)  # NaNs at the same places, row-major order
    np.testing.assert_array_equal(scan.ring, ring)


def test_big_endian_cloud(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    pts, ring = _points(10, 4), _ring(10, 4)
    write_bag(tmp_path / "be", {"/be": [(pts, ring, 5)]}, big_endian=True, point_step=20)
    (scan,) = iter_scans([tmp_path / "be"])
    np.testing.assert_array_equal(scan.points, pts)
    np.testing.assert_array_equal(scan.ring, ring)


def test_several_bags_get_distinct_names(tmp_path: Path) -> None:
    pytest.importorskip("rosbags")
    msgs = [(_points(8), _ring(8), 7)]
    write_bag(tmp_path / "a", {"/p": msgs})
    write_bag(tmp_path / "b.bag", {"/p": msgs}, ros=1)
    names = [s.name for s in iter_scans([tmp_path / "a", tmp_path / "b.bag"])]
    assert names == ["a_p_000000_7", "b_p_000000_7"]


def test_decode_field_aliases_and_missing_fields() -> None:
    rec = np.zeros(
        3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("reflectivity", "<u2"), ("channel", "u1")]
    )
    rec["x"], rec["reflectivity"], rec["channel"] = [1, 2, 3], [100, 200, 300], [5, 6, 7]

    def field(name: str, offset: int, datatype: int) -> SimpleNamespace:
        return SimpleNamespace(name=name, offset=offset, datatype=datatype, count=1)

    fields = [field("x", 0, 7), field("y", 4, 7), field("z", 8, 7), field("reflectivity", 12, 4)]
    msg = SimpleNamespace(
        height=1, width=3, point_step=15, row_step=45, is_bigendian=False, data=rec.tobytes(),
        fields=[*fields, field("channel", 14, 2)],
    )  # fmt: skip
    points, ring = decode_pointcloud2(msg)
    np.testing.assert_array_equal(points[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(points[:, 3], [100, 200, 300])
    np.testing.assert_array_equal(ring, [5, 6, 7])
    msg.fields = fields[:3]
    points, ring = decode_pointcloud2(msg)
    assert not points[:, 3].any() and ring is None  # no intensity field: zeros
    msg.fields = fields[1:]
    with pytest.raises(ValueError) as exc:
        decode_pointcloud2(msg, "bag:/t#0")
    _one_line_error(exc, "bag:/t#0", "'x'")
    msg.fields, msg.data = fields, rec.tobytes()[:-1]
    with pytest.raises(ValueError) as exc:
        decode_pointcloud2(msg, "bag:/t#0")
    _one_line_error(exc, "44 data bytes")


# ------------------------------------------------------------------------------------------- folders and names


def test_folder_recursion_sorted_unique_names_bag_folders_are_leaves(tmp_path: Path) -> None:
    root = tmp_path / "in"
    for seq in ("01", "00"):
        io.write_kitti_points(root / "sequences" / seq / "velodyne" / "000000.bin", _points(5))
    io.write_lidarseg(root / "sequences" / "00" / "x_lidarseg.bin", np.zeros(16, np.uint8))  # a label file
    (root / "notes.txt").write_text("not a scan")
    (root / ".hidden").mkdir()
    np.save(root / ".hidden" / "skip.npy", np.zeros((3, 3), np.float32))
    np.save(root / "zz.npy", np.zeros((3, 3), np.float32))
    expected = [
        str(root / "sequences" / "00" / "velodyne" / "000000.bin"),
        str(root / "sequences" / "01" / "velodyne" / "000000.bin"),
        str(root / "zz.npy"),
    ]
    if importlib.util.find_spec("rosbags") is not None:  # the rest of the test runs without rosbags
        write_bag(root / "m_bag", {"/p": [(_points(4), _ring(4), 3)]})
        expected.insert(0, f"{root / 'm_bag'}:/p#0")  # its .db3 inside is not read again
    scans = list(iter_scans([root]))
    assert [s.source for s in scans] == expected
    names = [s.name for s in scans]
    assert names[-3:] == ["00_velodyne_000000", "01_velodyne_000000", "zz"]
    assert names == [s.name for s in iter_scans([root])]  # stable
    assert len(list(iter_scans([root / "zz.npy", root]))) == len(scans)  # a file listed twice is read once


def test_input_scan_checks_shapes() -> None:
    with pytest.raises(ValueError, match="float32"):
        InputScan("a", np.zeros((3, 4)), None, "a.bin", None, "kitti")
    with pytest.raises(ValueError, match="int64"):
        InputScan("a", np.zeros((3, 4), np.float32), np.zeros(3, np.int32), "a.bin", None, "kitti")


# ------------------------------------------------------------------------------------------------------ errors


def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as exc:
        iter_scans([tmp_path / "nope.bin"])  # at the call, before any scan is read
    _one_line_error(exc, "nope.bin")
    (tmp_path / "x.bin").write_bytes(b"0123456789")
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / "x.bin"]))
    _one_line_error(exc, "x.bin: size 10 bytes is not a whole number of 16-byte KITTI point")
    (tmp_path / "a.txt").write_text("hi")
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / "a.txt"]))
    _one_line_error(exc, "a.txt: unsupported file type")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("nothing")
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / "empty"]))
    _one_line_error(exc, "empty: folder holds no supported")
    bad_npys = {"i.npy": np.zeros((4, 3), np.int32), "v.npy": np.zeros(4, np.float32), "junk.npy": None}
    for name, array in bad_npys.items():
        if array is None:
            (tmp_path / name).write_bytes(b"not numpy at all")
        else:
            np.save(tmp_path / name, array)
        with pytest.raises(ValueError) as exc:
            list(iter_scans([tmp_path / name]))
        _one_line_error(exc, f"{name}: ", "no .npy header" if array is None else "expected")


@pytest.mark.parametrize("name", ["bad.pcd", "bad.bag", "bad.mcap"])
def test_corrupt_cloud_and_bag_files(tmp_path: Path, name: str) -> None:
    pytest.importorskip("open3d" if name.endswith("pcd") else "rosbags")
    (tmp_path / name).write_bytes(b"garbage, not a point cloud")
    with pytest.raises(ValueError) as exc:
        list(iter_scans([tmp_path / name]))
    _one_line_error(exc, f"{name}: ")


@pytest.mark.parametrize(
    ("module", "name", "hint"), [("open3d", "a.ply", "rangecps[vis]"), ("rosbags", "a.bag", "[ros]")]
)
def test_missing_optional_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, name: str, hint: str
) -> None:
    (tmp_path / name).write_bytes(b"x")
    for mod in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, module + ".highlevel", None)
    with pytest.raises(ImportError) as exc:
        list(iter_scans([tmp_path / name]))
    _one_line_error(exc, hint)
