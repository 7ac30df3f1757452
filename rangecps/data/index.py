"""What every dataset index shares: the range-image geometry, scan records, and the saved index file.

An index lists, per split, the scans of a dataset root as :class:`ScanRecord` s (paths relative to the root). It is
built once from the official layout (by ``rangecps-prep``; nuScenes needs the devkit for that) and saved as JSON, so
that training and evaluation start without walking folders or loading the devkit's tables.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rangecps.atomic import atomic_write
from rangecps.io import Scan, read_kitti_labels, read_kitti_points, read_lidarseg, read_nuscenes_points
from rangecps.labels import LabelMap

INDEX_VERSION = 1
# Version of the record of what made an index (``DatasetIndex.source``); an index with another one is made again.
SOURCE_VERSION = 1


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
    """The scans of one dataset root, split by split.

    ``source`` records what made the index (see :func:`source_key`): prep sets it, and readers of a saved index
    compare it with the root as it is now, so that an index (and what was computed from it: statistics, cached
    range images) is never used for files it was not made from. None: not known (an index just built, or one
    saved by an older rangecps).
    """

    dataset: str
    root: Path
    splits: dict[str, list[ScanRecord]]
    source: dict[str, Any] | None = None

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
        if self.source is not None:
            data["source"] = self.source
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
        try:
            splits = {k: [ScanRecord(*row) for row in v] for k, v in data["splits"].items()}
            dataset, source = str(data["dataset"]), data.get("source")
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}: not a dataset index ({type(e).__name__}: {e}); run rangecps-prep again"
            ) from e
        return cls(dataset=dataset, root=Path(root), splits=splits, source=source)


def label_sources(index: DatasetIndex) -> dict[str, str]:
    """Where each split's labels come from: the label folder (``labels``, ``scribbles``, ``lidarseg/v1.0-mini``),
    sequence folders left out; ``""`` for a split without labels."""
    out = {}
    for split, records in index.splits.items():
        folders = set()
        for r in records:
            if r.labels is not None:
                parts = PurePosixPath(r.labels).parent.parts
                folders.add("/".join(parts[2:] if parts[:1] == ("sequences",) else parts))
        out[split] = ", ".join(sorted(folders))
    return out


def records_digest(splits: dict[str, list[ScanRecord]]) -> str:
    """A digest of the records of every split (ids, paths, tokens)."""
    h = hashlib.sha256()
    for split in sorted(splits):
        for r in splits[split]:
            h.update(f"{split}\0{r.scan_id}\0{r.points}\0{r.labels}\0{r.token}\n".encode())
    return h.hexdigest()


def files_digest(root: str | Path, index: DatasetIndex) -> str:
    """A digest of the size and modification time of every file the index names (missing files included)."""
    root = Path(root)
    h = hashlib.sha256()
    for split in sorted(index.splits):
        for r in index.splits[split]:
            for rel in (r.points, r.labels):
                if rel is None:
                    continue
                try:
                    st = os.stat(root / rel)
                    h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:
                    h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def source_key(dataset_cls: type, root: str | Path, index: DatasetIndex) -> dict[str, Any]:
    """What made ``index`` of ``root``: the dataset kind, its label map, each split's label source, the layout
    (``dataset_cls.layout_stamp``: which scans exist) and the sizes and modification times of every indexed
    file. Two keys are equal only if the index, and everything computed from it, still describes the root."""
    return {
        "version": SOURCE_VERSION,
        "dataset": dataset_cls.name,
        "label_map": dataset_cls.label_map,
        "labels": label_sources(index),
        "scans": {split: len(records) for split, records in index.splits.items()},
        "layout": dataset_cls.layout_stamp(root),
        "files": files_digest(root, index),
    }


def stale_reason(dataset_cls: type, root: str | Path, index: DatasetIndex) -> str | None:
    """Why a saved ``index`` does not describe ``root`` for ``dataset_cls`` any more, or None when it does."""
    src = index.source
    if index.dataset != dataset_cls.name:
        return f"it indexes {index.dataset}, not {dataset_cls.name}"
    if not isinstance(src, dict) or src.get("version") != SOURCE_VERSION:
        return "it was made by an older rangecps and does not record what it was made from"
    if src.get("dataset") != dataset_cls.name or src.get("label_map") != dataset_cls.label_map:
        return f"it was made for {src.get('dataset')} (label map {src.get('label_map')})"
    if src.get("layout") != dataset_cls.layout_stamp(root):
        return f"scans were added to or removed from {root} since it was made"
    if src.get("files") != files_digest(root, index):
        return f"files under {root} changed since it was made (sizes or modification times differ)"
    return None


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
