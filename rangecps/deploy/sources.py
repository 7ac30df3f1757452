"""Where ``rangecps-infer`` gets its scans: files, folders and ROS bags in, :class:`InputScan` out. No labels.

| input                                 | kind              | read                                          |
|---------------------------------------|-------------------|-----------------------------------------------|
| ``*.bin`` (SemanticKITTI)             | ``kitti``         | float32 x, y, z, remission (0-1)              |
| ``*.pcd.bin`` (nuScenes)              | ``nuscenes``      | x, y, z, intensity **as stored (0-255)**, ring |
| ``*.pcd``, ``*.ply`` (Open3D)         | ``pcd``, ``ply``  | positions, intensity (0 if absent), [ring]    |
| ``*.npy``                             | ``npy``           | (N, >=3) float x, y, z, [intensity], [ring]   |
| ``*.bag``, ``*.db3``, ``*.mcap``, ROS 2 bag folder (``metadata.yaml``) | ``bag`` | PointCloud2 on one topic |

Intensity is passed on in the unit the source stores: a model trained on KITTI (0-1) must not be fed nuScenes
(0-255) intensities unscaled, and this module does not guess. Columns of a ``.npy`` past the fifth are ignored.
Non-finite points are **kept** everywhere (organised PointCloud2 clouds mark missing returns with NaN): the toolkit
labels every point, and the projection gives such points no pixel. A folder input yields the supported files inside
it, recursively and sorted by path; a ROS 2 bag folder is one bag; hidden entries and nuScenes ``*_lidarseg.bin``
label files are skipped.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rangecps.io import ScanFormatError, read_kitti_points, read_nuscenes_points

KINDS = ("kitti", "nuscenes", "pcd", "ply", "npy", "bag")
_SUFFIX_KINDS = {".bin": "kitti", ".pcd": "pcd", ".ply": "ply", ".npy": "npy"}
_BAG_SUFFIXES = (".bag", ".db3", ".mcap")
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
# sensor_msgs/PointField datatype constants (INT8 = 1 .. FLOAT64 = 8) as NumPy type codes, byte order added later.
POINTFIELD_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
INTENSITY_FIELDS = ("intensity", "i", "reflectivity")  # first present wins; Ouster has both, intensity first
RING_FIELDS = ("ring", "channel")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value, so identity equality and hashing
class InputScan:
    """One scan to label.

    Attributes:
        name: unique, filesystem-safe stem for the prediction file ("000123" for 000123.bin;
            "<topic>_<index:06d>_<stamp_ns>" for a bag message, prefixed with the bag's stem when several bags
            are read).
        points: (N, 4) float32 x, y, z, intensity (unit as stored by the source); non-finite points included.
        ring: (N,) int64 laser index when the source stores one, else None.
        source: file path, or "bag:/topic#index" for a bag message.
        stamp_ns: acquisition time in ns (bags: header stamp, else the recording time), None for files.
        kind: one of :data:`KINDS`.
    """

    name: str
    points: np.ndarray
    ring: np.ndarray | None
    source: str
    stamp_ns: int | None
    kind: str

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] != 4 or self.points.dtype != np.float32:
            raise ValueError(
                f"{self.source}: points must be (N, 4) float32, got {self.points.shape} {self.points.dtype}"
            )
        if self.ring is not None and (self.ring.shape != (len(self.points),) or self.ring.dtype != np.int64):
            raise ValueError(
                f"{self.source}: ring must be ({len(self.points)},) int64, got {self.ring.shape} "
                f"{self.ring.dtype}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"{self.source}: unknown kind {self.kind!r}")


def iter_scans(inputs: list[str | Path], topic: str | None = None) -> Iterator[InputScan]:
    """Yield every scan of ``inputs`` (files, folders, bags) in order; folders sorted by path.

    ``topic`` selects the PointCloud2 topic of every bag; None picks a bag's only PointCloud2 topic. All inputs
    are listed when this is called, before any scan is read, so a missing input fails at once.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: unsupported file, folder without supported files, a bad file (ScanFormatError), an
            ambiguous or missing topic. Messages are one line that names the file.
        ImportError: Open3D (.pcd/.ply) or rosbags (bags) is not installed.
    """
    sources = [item for raw in inputs for item in _expand(Path(raw))]
    sources = list(dict.fromkeys(sources))  # a file listed twice (directly and via its folder) is read once
    file_paths = [p for p, kind in sources if kind != "bag"]
    bag_paths = [p for p, kind in sources if kind == "bag"]
    file_names = dict(zip(file_paths, _unique_stems(file_paths), strict=True))
    # One bag: names as "<topic>_<index>_<stamp>". Several: the bag's stem in front keeps equal topics apart.
    bag_names = dict(zip(bag_paths, _unique_stems(bag_paths), strict=True)) if len(bag_paths) > 1 else {}
    return _generate(sources, file_names, bag_names, topic)


def _generate(
    sources: list[tuple[Path, str]],
    file_names: dict[Path, str],
    bag_names: dict[Path, str],
    topic: str | None,
) -> Iterator[InputScan]:
    seen: set[str] = set()
    for path, kind in sources:
        if kind == "bag":
            for scan in _read_bag(path, topic, bag_names.get(path)):
                yield _claim(scan, seen)
            continue
        points, ring = _FILE_READERS[kind](path)
        yield _claim(InputScan(file_names[path], points, ring, str(path), None, kind), seen)


def _claim(scan: InputScan, seen: set[str]) -> InputScan:
    """Last guard for uniqueness across files and bags (pathological clashes only): suffix _2, _3, ..."""
    name, k = scan.name, 1
    while name in seen:
        k += 1
        name = f"{scan.name}_{k}"
    seen.add(name)
    return scan if name == scan.name else replace(scan, name=name)


# ---------------------------------------------------------------------------------------------- listing inputs


def _kind_of(path: Path) -> str | None:
    """The kind of a file or folder, None when it is not a scan source."""
    lower = path.name.lower()
    if path.is_dir():
        return "bag" if (path / "metadata.yaml").is_file() else None
    if lower.endswith(".pcd.bin"):
        return "nuscenes"
    if lower.endswith("_lidarseg.bin"):
        return None
    if lower.endswith(_BAG_SUFFIXES):
        return "bag"
    return _SUFFIX_KINDS.get(path.suffix.lower())


def _expand(path: Path) -> list[tuple[Path, str]]:
    """One input as (path, kind) pairs: itself, or the supported entries of a folder, sorted by path."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = _kind_of(path)
    if kind is not None:
        return [(path, kind)]
    if path.is_file():
        what = (
            "a nuScenes lidarseg label file, not a scan"
            if path.name.endswith("_lidarseg.bin")
            else (
                f"unsupported file type (supported: .bin, .pcd.bin, .pcd, .ply, .npy, {', '.join(_BAG_SUFFIXES)}, "
                "ROS 2 bag folders)"
            )
        )
        raise ValueError(f"{path}: {what}")
    found: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for entry in [*dirs, *files]:
            child = Path(root) / entry
            if entry.startswith(".") or (kind := _kind_of(child)) is None:
                continue
            found.append((child, kind))
        dirs[:] = [d for d in dirs if _kind_of(Path(root) / d) != "bag"]  # a bag folder is a leaf
    if not found:
        raise ValueError(f"{path}: folder holds no supported scan files or bags")
    return sorted(found)


def _stem(path: Path) -> str:
    name = path.name
    if path.is_dir():  # a ROS 2 bag folder: its whole name ("run.2024-05-01")
        return name
    for suffix in (".pcd.bin", path.suffix):
        if suffix and name.lower().endswith(suffix.lower()) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _safe(text: str) -> str:
    """Filesystem-safe: runs of other characters become "_", no leading dot (no hidden files)."""
    return _UNSAFE.sub("_", text).strip("_").lstrip(".") or "_"


def _unique_stems(paths: list[Path]) -> list[str]:
    """The stems of ``paths``; stems that clash take parent folders in front ("00_velodyne_000000") until unique."""
    parts = [[_safe(p) for p in path.resolve().parent.parts[1:]] + [_safe(_stem(path))] for path in paths]
    depth = [1] * len(paths)
    while True:
        names = ["_".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        clashes = {n for n, c in Counter(names).items() if c > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    # Full paths that still read alike once joined with "_" ("a_b/c" vs "a/b_c"): number them, in order.
    counts: Counter[str] = Counter()
    out = []
    for n in names:
        counts[n] += 1
        out.append(n if counts[n] == 1 else f"{n}_{counts[n]}")
    return out


# ------------------------------------------------------------------------------------------------ file readers


def _read_kitti(path: Path) -> tuple[np.ndarray, None]:
    return read_kitti_points(path), None


def _read_nuscenes(path: Path) -> tuple[np.ndarray, np.ndarray]:
    points, ring = read_nuscenes_points(path)
    return points, ring.astype(np.int64)


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # else np.load guesses a pickle and reports that instead
            raise ScanFormatError(f"{path}: not a NumPy .npy file (no .npy header)")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ScanFormatError(f"{path}: not a readable .npy array ({_one_line(err)})") from None
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] < 3:
        shape = getattr(data, "shape", type(data).__name__)
        raise ScanFormatError(
            f"{path}: expected an (N, >=3) array of x, y, z, [intensity], [ring], got {shape}"
        )
    if not np.issubdtype(data.dtype, np.floating):
        raise ScanFormatError(f"{path}: expected a float array, got {data.dtype}")
    points = np.zeros((len(data), 4), dtype=np.float32)
    points[:, : min(data.shape[1], 4)] = data[:, :4]
    ring = _as_ring(data[:, 4], str(path)) if data.shape[1] >= 5 else None
    return points, ring


def _read_open3d(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        import open3d as o3d
    except (ImportError, OSError) as err:  # OSError: libusb-1.0 missing on a bare system
        raise ImportError(
            f"reading .pcd/.ply needs Open3D: pip install rangecps[vis] ({_one_line(err)})"
        ) from err
    # The tensor API keeps custom attributes (intensity, ring) that the legacy reader drops; NaNs stay.
    cloud = o3d.t.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    attrs = {name: cloud.point[name].numpy() for name in cloud.point}
    if "positions" not in attrs:
        raise ScanFormatError(f"{path}: Open3D read no points from it (unreadable or empty file)")
    xyz = attrs["positions"]
    points = np.zeros((len(xyz), 4), dtype=np.float32)
    points[:, :3] = xyz
    intensity = next((attrs[n] for n in INTENSITY_FIELDS if n in attrs), None)
    if intensity is not None:
        points[:, 3] = intensity.reshape(len(xyz), -1)[:, 0]
    ring = next((attrs[n] for n in RING_FIELDS if n in attrs), None)
    return points, None if ring is None else _as_ring(ring.reshape(len(xyz), -1)[:, 0], str(path))


def _as_ring(values: np.ndarray, where: str) -> np.ndarray:
    """(N,) ring indices as int64; stored floats must be whole, non-negative numbers."""
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values) | (values != np.round(values)) | (values < 0)
        if bad.any():
            raise ScanFormatError(
                f"{where}: {int(bad.sum())} ring values are not non-negative integers "
                f"(first at point {int(np.argmax(bad))})"
            )
    return values.astype(np.int64)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


_FILE_READERS: dict[str, Any] = {
    "kitti": _read_kitti,
    "nuscenes": _read_nuscenes,
    "pcd": _read_open3d,
    "ply": _read_open3d,
    "npy": _read_npy,
}


# ------------------------------------------------------------------------------------------------------- bags


def _read_bag(path: Path, topic: str | None, prefix: str | None) -> Iterator[InputScan]:
    """Every PointCloud2 message on ``topic`` of one ROS 1 or ROS 2 bag, in recording order."""
    try:
        from rosbags.highlevel import AnyReader, AnyReaderError
        from rosbags.rosbag1 import ReaderError as Reader1Error
        from rosbags.rosbag2 import ReaderError as Reader2Error
        from rosbags.serde import SerdeError
        from rosbags.typesys import Stores, get_typestore
    except ImportError as err:
        raise ImportError(
            f"reading ROS bags needs rosbags: pip install rangecps[ros] ({_one_line(err)})"
        ) from err
    # Used only for bags that carry no message definitions; PointCloud2 is the same in every distribution.
    store = get_typestore(Stores.ROS1_NOETIC if path.suffix.lower() == ".bag" else Stores.ROS2_HUMBLE)
    try:
        with AnyReader([path], default_typestore=store) as reader:
            clouds = sorted(t for t, info in reader.topics.items() if info.msgtype == POINTCLOUD2)
            if topic is None:
                if len(clouds) != 1:
                    raise ValueError(
                        f"{path}: {len(clouds)} {POINTCLOUD2} topics ({', '.join(clouds) or 'none'}); "
                        "choose one with --topic"
                    )
                topic = clouds[0]
            elif topic not in clouds:
                raise ValueError(
                    f"{path}: no {POINTCLOUD2} topic {topic!r} (found: {', '.join(clouds) or 'none'})"
                )
            stem = _safe(topic) if prefix is None else f"{prefix}_{_safe(topic)}"
            connections = [c for c in reader.connections if c.topic == topic]
            for index, (conn, bag_ns, raw) in enumerate(reader.messages(connections=connections)):
                source = f"{path}:{topic}#{index}"
                msg = reader.deserialize(raw, conn.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                # Drivers that leave the header stamp at 0: fall back to the recording time.
                stamp = stamp or bag_ns
                points, ring = decode_pointcloud2(msg, source)
                yield InputScan(f"{stem}_{index:06d}_{stamp}", points, ring, source, stamp, "bag")
    except (AnyReaderError, Reader1Error, Reader2Error, SerdeError) as err:
        raise ScanFormatError(f"{path}: not a readable ROS bag ({_one_line(err)})") from None


def decode_pointcloud2(msg: Any, where: str = "PointCloud2") -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a ``sensor_msgs/PointCloud2`` (any object with its fields) with NumPy.

    Reads x, y, z, the first of :data:`INTENSITY_FIELDS` (zeros when none) and the first of :data:`RING_FIELDS`.
    Other fields, padding inside ``point_step`` and at the end of each ``row_step`` are skipped. Every point of
    the height x width grid is returned in row-major order, NaN points of organised clouds included.

    Returns:
        points: (height * width, 4) float32 x, y, z, intensity.
        ring: (height * width,) int64, or None when the cloud has no ring field.
    """
    height, width, step, row_step = int(msg.height), int(msg.width), int(msg.point_step), int(msg.row_step)
    order = ">" if msg.is_bigendian else "<"
    fields = {f.name: f for f in msg.fields}
    wanted = {"x": "x", "y": "y", "z": "z"}
    for role, names in (("intensity", INTENSITY_FIELDS), ("ring", RING_FIELDS)):
        name = next((n for n in names if n in fields), None)
        if name is not None:
            wanted[role] = name
    spec: dict[str, list[Any]] = {"names": [], "formats": [], "offsets": []}
    for role, name in wanted.items():
        field = fields.get(name)
        if field is None:
            raise ScanFormatError(f"{where}: PointCloud2 has no field {name!r} (fields: {', '.join(fields)})")
        code = POINTFIELD_TYPES.get(int(field.datatype))
        if code is None or int(field.count) != 1:
            raise ScanFormatError(
                f"{where}: field {name!r} has datatype {field.datatype} and count "
                f"{field.count}; expected one of 1..8 and count 1"
            )
        if int(field.offset) + int(code[1]) > step:
            raise ScanFormatError(
                f"{where}: field {name!r} at offset {field.offset} overruns point_step {step}"
            )
        spec["names"].append(role)
        spec["formats"].append(order + code)
        spec["offsets"].append(int(field.offset))
    if row_step < width * step:
        raise ScanFormatError(f"{where}: row_step {row_step} < width {width} x point_step {step}")
    raw = msg.data
    data = (
        np.frombuffer(raw, np.uint8) if isinstance(raw, bytes | bytearray | memoryview) else np.asarray(raw)
    )
    data = data.view(np.uint8).reshape(-1)
    if len(data) < height * row_step:
        raise ScanFormatError(
            f"{where}: {len(data)} data bytes, expected height {height} x row_step {row_step}"
        )
    # Cut row padding, then view each point_step-byte record through a dtype that names only the fields used.
    rows = np.ascontiguousarray(data[: height * row_step].reshape(height, row_step)[:, : width * step])
    cloud = rows.view(np.dtype({**spec, "itemsize": step})).reshape(-1)
    points = np.zeros((len(cloud), 4), dtype=np.float32)
    for col, role in enumerate(("x", "y", "z", "intensity")):
        if role in wanted:
            points[:, col] = cloud[role]
    ring = _as_ring(cloud["ring"], where) if "ring" in wanted else None
    return points, ring
