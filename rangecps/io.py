"""Read and write LiDAR scans and labels in their official on-disk formats. NumPy only.

| format                      | file                 | record                                          |
|-----------------------------|----------------------|-------------------------------------------------|
| SemanticKITTI scan          | ``velodyne/*.bin``   | float32 x, y, z, remission (0-1)                |
| SemanticKITTI labels        | ``labels/*.label``   | uint32: semantic raw id (low 16), instance (high 16) |
| nuScenes scan               | ``*.pcd.bin``        | float32 x, y, z, intensity (0-255), ring (0-31) |
| nuScenes lidarseg labels    | ``*_lidarseg.bin``   | uint8 fine category index                       |

Every reader checks what it can (file present, size a whole number of records, label count equal to the point count)
and raises :class:`ScanFormatError` naming the file and the problem. Non-finite coordinates are *not* an error:
such points are kept so that every point of a scan still receives a prediction later; the projection gives them no
pixel. Writers are atomic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rangecps.atomic import atomic_save_array

PathLike = str | os.PathLike

KITTI_POINT_FIELDS = 4
NUSCENES_POINT_FIELDS = 5
NUSCENES_NUM_RINGS = 32


class ScanFormatError(ValueError):
    """A scan or label file that is missing or does not match its format. The message names the file, on one line.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``ScanFormatError(text)`` where
    ``text`` is "Caught ScanFormatError in DataLoader worker process N." followed by the worker's traceback; the
    error then keeps that text in ``worker_traceback`` and its message is the original one line again.
    """

    def __init__(self, message: str = "", *args: object) -> None:
        self.worker_traceback: str | None = None
        text = str(message)
        if text.startswith("Caught ") and "\n" in text:
            last = text.rstrip().splitlines()[-1]
            name = f"{type(self).__module__}.{type(self).__qualname__}: "
            if last.startswith(name):
                self.worker_traceback, message = text, last[len(name) :]
        super().__init__(message, *args)


@dataclass
class Scan:
    """One LiDAR scan as the rest of the toolkit sees it.

    Attributes:
        points: (N, 4) float32 x, y, z (m, sensor frame), intensity (as stored by the dataset).
        ring: (N,) int32 laser ring index (0 = lowest beam) when the format stores it, else None.
        labels: (N,) int64 train ids (0 = ignore) when labels were read, else None.
        meta: dataset, split, sequence/scene, frame/token and source paths.
    """

    points: np.ndarray
    ring: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.points)
        if self.points.ndim != 2 or self.points.shape[1] != 4 or self.points.dtype != np.float32:
            raise ValueError(
                f"Scan.points must be (N, 4) float32, got {self.points.shape} {self.points.dtype}"
            )
        for name in ("ring", "labels"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise ValueError(f"Scan.{name} has shape {value.shape}, expected ({n},)")

    @property
    def num_points(self) -> int:
        return len(self.points)


def _read_records(path: PathLike, dtype: np.dtype, fields: int, what: str) -> np.ndarray:
    """Read a flat binary file of ``fields``-wide records of ``dtype``; (N, fields), or (N,) when fields == 1."""
    path = Path(path)
    if not path.is_file():
        raise ScanFormatError(f"{path}: {what} file not found")
    record = np.dtype(dtype).itemsize * fields
    try:
        size = path.stat().st_size
        if size % record:
            raise ScanFormatError(
                f"{path}: size {size} bytes is not a whole number of {record}-byte {what} records "
                f"(truncated or wrong format?)"
            )
        data = np.fromfile(path, dtype=dtype)
    except OSError as e:  # vanished since the check, unreadable, an I/O error of the disk
        raise ScanFormatError(f"{path}: cannot read the {what} file ({e.strerror or e})") from e
    if data.size * data.itemsize != size:
        raise ScanFormatError(
            f"{path}: read {data.size * data.itemsize} of {size} bytes (file changed while read?)"
        )
    return data.reshape(-1, fields) if fields > 1 else data


def _check_count(path: PathLike, count: int, num_points: int | None) -> None:
    if num_points is not None and count != num_points:
        raise ScanFormatError(f"{path}: {count} labels but the scan has {num_points} points")


def _check_writable(array: np.ndarray, shape_tail: tuple[int, ...], what: str) -> None:
    if array.ndim != 1 + len(shape_tail) or array.shape[1:] != shape_tail:
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, shape_tail))}), got {array.shape}")


def read_kitti_points(path: PathLike) -> np.ndarray:
    """Read a SemanticKITTI ``.bin`` scan. Returns (N, 4) float32 x, y, z, remission."""
    return _read_records(path, np.float32, KITTI_POINT_FIELDS, "KITTI point")


def write_kitti_points(path: PathLike, points: np.ndarray) -> None:
    """Write (N, 4) x, y, z, remission as a SemanticKITTI ``.bin`` (float32)."""
    _check_writable(points, (KITTI_POINT_FIELDS,), "KITTI points")
    atomic_save_array(path, points.astype(np.float32, copy=False))


def read_kitti_labels(path: PathLike, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a SemanticKITTI ``.label`` file.

    Returns:
        semantic: (N,) uint16 raw ids (low 16 bits).
        instance: (N,) uint16 instance ids (high 16 bits).
    """
    raw = _read_records(path, np.uint32, 1, "KITTI label")
    _check_count(path, len(raw), num_points)
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def write_kitti_labels(path: PathLike, semantic: np.ndarray, instance: np.ndarray | None = None) -> None:
    """Write (N,) raw semantic ids and optional (N,) instance ids as a SemanticKITTI ``.label`` (uint32)."""
    semantic = np.asarray(semantic)
    if semantic.ndim != 1:
        raise ValueError(f"semantic labels must be (N,), got {semantic.shape}")
    if semantic.size and (semantic.min() < 0 or semantic.max() > 0xFFFF):
        raise ValueError("semantic ids must fit in 16 bits")
    packed = semantic.astype(np.uint32)
    if instance is not None:
        instance = np.asarray(instance)
        if instance.shape != semantic.shape:
            raise ValueError(f"instance ids {instance.shape} do not match semantic ids {semantic.shape}")
        if instance.size and (instance.min() < 0 or instance.max() > 0xFFFF):
            raise ValueError("instance ids must fit in 16 bits")
        packed |= instance.astype(np.uint32) << np.uint32(16)
    atomic_save_array(path, packed)


def read_nuscenes_points(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a nuScenes ``.pcd.bin`` lidar sweep.

    Returns:
        points: (N, 4) float32 x, y, z, intensity (0-255).
        ring: (N,) int32 ring index 0..31 (0 = lowest beam).
    """
    data = _read_records(path, np.float32, NUSCENES_POINT_FIELDS, "nuScenes point")
    ring_f = data[:, 4]
    ring = ring_f.astype(np.int32)
    bad = ~np.isfinite(ring_f) | (ring_f != ring) | (ring < 0) | (ring >= NUSCENES_NUM_RINGS)
    if bad.any():
        raise ScanFormatError(
            f"{path}: {int(bad.sum())} points have a ring index that is not an integer in "
            f"0..{NUSCENES_NUM_RINGS - 1} (first at point {int(np.argmax(bad))})"
        )
    return np.ascontiguousarray(data[:, :4]), ring


def write_nuscenes_points(path: PathLike, points: np.ndarray, ring: np.ndarray) -> None:
    """Write (N, 4) x, y, z, intensity and (N,) ring as a nuScenes ``.pcd.bin`` (float32 x 5)."""
    _check_writable(points, (4,), "nuScenes points")
    ring = np.asarray(ring)
    if ring.shape != (len(points),):
        raise ValueError(f"ring {ring.shape} does not match points {points.shape}")
    if ring.size and (ring.min() < 0 or ring.max() >= NUSCENES_NUM_RINGS):
        raise ValueError(f"ring indices must lie in 0..{NUSCENES_NUM_RINGS - 1}")
    data = np.empty((len(points), NUSCENES_POINT_FIELDS), dtype=np.float32)
    data[:, :4] = points
    data[:, 4] = ring
    atomic_save_array(path, data)


def read_lidarseg(path: PathLike, num_points: int | None = None) -> np.ndarray:
    """Read a nuScenes lidarseg ``_lidarseg.bin``. Returns (N,) uint8 fine category indices."""
    labels = _read_records(path, np.uint8, 1, "lidarseg label")
    _check_count(path, len(labels), num_points)
    return labels


def write_lidarseg(path: PathLike, labels: np.ndarray) -> None:
    """Write (N,) fine category indices (0..255) as a nuScenes lidarseg ``.bin`` (uint8)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"lidarseg labels must be (N,), got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError("lidarseg labels must fit in uint8")
    atomic_save_array(path, labels.astype(np.uint8))
