"""What every dataset index shares: the range-image geometry, scan records, and the saved index file.

An index lists, per split, the scans of a dataset root as :class:`ScanRecord` s (paths relative to the root). It is
built once from the official layout (by ``rangecps-prep``; nuScenes needs the devkit for that) and saved as JSON, so
that training and evaluation start without walking folders or loading the devkit's tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rangecps.atomic import atomic_write
from rangecps.io import Scan, read_kitti_labels, read_kitti_points, read_lidarseg, read_nuscenes_points
from rangecps.labels import LabelMap

INDEX_VERSION = 1


@dataclass(frozen=True)
class Geometry:
    """The range image of a sensor: its size and how rows are found.

    ``rings`` True: the row is ``height - 1 - ring`` (nuScenes stores the ring index); else rows come from the
    pitch between ``fov_down`` and ``fov_up`` (degrees), as in RangeNet++. ``elevations``: with rings, each
    laser's elevation (deg, ring 0 first) when the lasers are not evenly spaced from ``fov_down`` to ``fov_up``;
    LaserMix places its inclination bands by them.
    """

    height: int
    width: int
    fov_up: float
    fov_down: float
    rings: bool
    elevations: tuple[float, ...] | None = None


# The published range-view settings: 64x2048 for the HDL-64E of KITTI, 32x1920 for the HDL-32E of nuScenes.
KITTI_GEOMETRY = Geometry(height=64, width=2048, fov_up=3.0, fov_down=-25.0, rings=False)
NUSCENES_GEOMETRY = Geometry(height=32, width=1920, fov_up=10.67, fov_down=-30.67, rings=True)


@dataclass(frozen=True)
class ScanRecord:
    """One scan of an index.

    Attributes:
        scan_id: ``SS/NNNNNN`` on the KITTI datasets, the sample token on nuScenes.
        points: path of the point file, relative to the dataset root.
        labels: path of the label file used for this split (ScribbleKITTI trains on scribbles), or None (test).
        token: nuScenes only: the LIDAR_TOP ``sample_data`` token, which names lidarseg and submission files.
    """

    scan_id: str
    points: str
    labels: str | None
    token: str | None = None


@dataclass
class DatasetIndex:
    """The scans of one dataset root, split by split."""

    dataset: str
    root: Path
    splits: dict[str, list[ScanRecord]]

    def ids(self, split: str) -> list[str]:
        return [r.scan_id for r in self.split(split)]

    def split(self, split: str) -> list[ScanRecord]:
        if split not in self.splits:
            raise KeyError(
                f"{self.dataset} index of {self.root} has no split '{split}' (has {sorted(self.splits)})"
            )
        return self.splits[split]

    def save(self, path: str | Path) -> None:
        data = {
            "version": INDEX_VERSION,
            "dataset": self.dataset,
            "splits": {
                k: [[r.scan_id, r.points, r.labels, r.token] for r in v] for k, v in self.splits.items()
            },
        }
        with atomic_write(path, "w") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path: str | Path, root: str | Path) -> DatasetIndex:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the dataset index: {e}") from e
        if data.get("version") != INDEX_VERSION:
            raise ValueError(
                f"{path}: index version {data.get('version')} != {INDEX_VERSION}; run rangecps-prep again"
            )
        splits = {k: [ScanRecord(*row) for row in v] for k, v in data["splits"].items()}
        return cls(dataset=data["dataset"], root=Path(root), splits=splits)


def read_scan(root: Path, record: ScanRecord, file_format: str, label_map: LabelMap | None) -> Scan:
    """Read one scan and, when the record has labels and a label map is given, its labels as train ids.

    Args:
        root: dataset root; record paths are relative to it.
        file_format: ``"kitti"`` (``.bin`` + ``.label``) or ``"nuscenes"`` (``.pcd.bin`` + lidarseg ``.bin``).

    Returns:
        A :class:`~rangecps.io.Scan` with ``meta`` = scan id, token and source paths.
    """
    points_path = root / record.points
    labels_path = root / record.labels if record.labels else None
    if file_format == "kitti":
        points, ring = read_kitti_points(points_path), None
        raw = read_kitti_labels(labels_path, len(points))[0] if labels_path and label_map else None
    elif file_format == "nuscenes":
        points, ring = read_nuscenes_points(points_path)
        raw = read_lidarseg(labels_path, len(points)) if labels_path and label_map else None
    else:
        raise ValueError(f"unknown file format {file_format!r}")
    labels = label_map.to_train(raw, source=labels_path) if raw is not None else None
    meta = {
        "scan_id": record.scan_id,
        "token": record.token,
        "points": str(points_path),
        "labels": labels_path,
    }
    return Scan(points=points, ring=ring, labels=labels, meta=meta)
