"""Scans as the viewer sees them: point, label and prediction files read into train ids, and dataset splits.

Formats are told by file name: ``*.pcd.bin`` is a nuScenes sweep (labels: a lidarseg ``.bin`` of fine ids), any
other ``*.bin`` a SemanticKITTI scan (labels: a ``.label`` of raw ids). Prediction files are read as the
benchmarks want them written (``ids="auto"``): on KITTI a ``.label`` of raw ids, on nuScenes a lidarseg ``.bin`` of
the 16 challenge classes 1..16 (train ids); ``ids="raw"`` reads nuScenes fine ids and ``ids="train"`` KITTI train
ids instead.

Predictions of a split come from a ``rangecps-eval --write-predictions`` results folder (by default the newest
``<run>/eval_<split>_*`` holding predictions), at the paths :mod:`rangecps.eval.submit` writes:
``sequences/SS/predictions/NNNNNN.label`` (KITTI) or ``lidarseg/<eval set>/<token>_lidarseg.bin`` (nuScenes). Such
a folder must end with a complete ``manifest.json`` (what every finished evaluation writes last): a tree without
one may come from an evaluation that failed or mix two, and is refused, by folder and file alike
(:func:`rangecps.eval.outputs.check_prediction_file`). Prediction files of other tools are read as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rangecps.data.index import KITTI_GEOMETRY, NUSCENES_GEOMETRY, ScanRecord
from rangecps.io import (
    ScanFormatError,
    read_kitti_labels,
    read_kitti_points,
    read_lidarseg,
    read_nuscenes_points,
)
from rangecps.labels import LabelMap, load_label_map
from rangecps.vis.images import point_colors

COLOR_MODES = ("labels", "pred", "errors", "range", "intensity")
GEOMETRY = {"kitti": KITTI_GEOMETRY, "nuscenes": NUSCENES_GEOMETRY}
LABEL_MAP = {"kitti": "semantickitti", "nuscenes": "nuscenes"}


@dataclass
class ViewScan:
    """One scan ready to show: ``points (N, 4) float32``, ``ring (N,) int32 | None``, ``labels``/``pred``
    ``(N,) int64`` train ids or None, the label map of its dataset, its file format and a display name."""

    points: np.ndarray
    ring: np.ndarray | None
    labels: np.ndarray | None
    pred: np.ndarray | None
    label_map: LabelMap
    file_format: str
    name: str

    def has(self, mode: str) -> bool:
        need = {"labels": (self.labels,), "pred": (self.pred,), "errors": (self.labels, self.pred)}
        return all(a is not None for a in need.get(mode, ()))

    def colors(self, mode: str) -> np.ndarray:
        """``(N, 3) uint8`` colours of every point in ``mode`` (one of :data:`COLOR_MODES`)."""
        return point_colors(mode, self.points, self.labels, self.pred, self.label_map)


def scan_format(path: str | Path) -> str:
    """``"nuscenes"`` for a ``*.pcd.bin``, ``"kitti"`` for another ``*.bin``; ValueError otherwise."""
    name = Path(path).name
    if name.endswith(".pcd.bin"):
        return "nuscenes"
    if name.endswith(".bin"):
        return "kitti"
    raise ValueError(f"{path}: cannot tell the format; expected a SemanticKITTI .bin or a nuScenes .pcd.bin")


def read_labels(path: str | Path, file_format: str, label_map: LabelMap, num_points: int) -> np.ndarray:
    """Ground truth in the dataset's format (KITTI raw ids, nuScenes fine ids) -> ``(N,) int64`` train ids."""
    raw = (
        read_kitti_labels(path, num_points)[0] if file_format == "kitti" else read_lidarseg(path, num_points)
    )
    return label_map.to_train(raw, source=path)


def read_predictions(
    path: str | Path, file_format: str, label_map: LabelMap, num_points: int, ids: str = "auto"
) -> np.ndarray:
    """A prediction file -> ``(N,) int64`` train ids. A file of a rangecps-eval results folder without a
    complete ``manifest.json`` (or not listed in it) is refused (:class:`~rangecps.eval.outputs.IncompleteResults`).

    Args:
        ids: ``auto`` (KITTI raw ids, nuScenes challenge classes: what submissions hold), ``raw`` or ``train``.
    """
    from rangecps.eval.outputs import check_prediction_file

    check_prediction_file(path)
    if ids == "auto":
        ids = "raw" if file_format == "kitti" else "train"
    if ids == "raw":
        return read_labels(path, file_format, label_map, num_points)
    if ids != "train":
        raise ValueError(f"prediction ids must be auto, raw or train, got {ids!r}")
    raw = (
        read_kitti_labels(path, num_points)[0] if file_format == "kitti" else read_lidarseg(path, num_points)
    )
    if raw.size and raw.max() >= label_map.num_classes:
        raise ScanFormatError(
            f"{path}: holds ids up to {raw.max()}, but train ids of {label_map.name} stop at "
            f"{label_map.num_classes - 1}; if it holds raw ids, pass --pred-ids raw"
        )
    return raw.astype(np.int64)


def load_scan(
    path: str | Path,
    labels: str | Path | None = None,
    pred: str | Path | None = None,
    pred_ids: str = "auto",
    label_map: str | None = None,
) -> ViewScan:
    """Read a scan file with optional ground-truth and prediction files (formats: see the module docstring).

    ``label_map`` overrides the format's own map (a dataset name or a YAML path)."""
    fmt = scan_format(path)
    if fmt == "kitti":
        points, ring = read_kitti_points(path), None
    else:
        points, ring = read_nuscenes_points(path)
    lm = load_label_map(label_map or LABEL_MAP[fmt])
    gt = read_labels(labels, fmt, lm, len(points)) if labels is not None else None
    pr = read_predictions(pred, fmt, lm, len(points), pred_ids) if pred is not None else None
    return ViewScan(points, ring, gt, pr, lm, fmt, Path(path).name)


def guess_dataset(root: Path, run: Path | None) -> str:
    """The dataset name from a run's ``config.yaml`` (``data.dataset``), else from the root's layout."""
    if run is not None and (run / "config.yaml").is_file():
        import yaml

        name = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("data", {}).get("dataset")
        if name:
            return str(name)
    if (root / "sequences").is_dir():
        return "semantickitti"
    if any(root.glob("v1.0-*")):
        return "nuscenes"
    raise ValueError(f"{root}: neither sequences/ (SemanticKITTI) nor v1.0-* (nuScenes); pass --dataset")


def has_predictions(folder: Path) -> bool:
    """Whether ``folder`` holds a prediction tree (KITTI ``sequences/`` or nuScenes ``lidarseg/``)."""
    return (folder / "sequences").is_dir() or (folder / "lidarseg").is_dir()


def find_prediction_dir(run: Path, split: str) -> Path:
    """The newest ``<run>/eval_<split>_*`` folder holding predictions with a complete ``manifest.json``.

    A folder whose predictions lack one is refused (:class:`~rangecps.eval.outputs.IncompleteResults`) when no
    complete folder is there to show instead."""
    from rangecps.eval.outputs import IncompleteResults, read_manifest

    again = f"rangecps-eval {run} --split {split} --write-predictions"
    found = [d for d in run.glob(f"eval_{split}_*") if has_predictions(d)]
    if not found:
        raise FileNotFoundError(
            f"{run}: no eval_{split}_*/ folder with predictions; write them with: {again}"
        )
    complete, refused = [], []
    for folder in found:
        try:
            manifest = read_manifest(folder)
        except IncompleteResults as e:
            refused.append(str(e).split("; ")[0])
            continue
        if manifest.get("predictions", True):
            complete.append(folder)
    if not complete:
        raise IncompleteResults(f"{refused[0]}; evaluate again: {again}")
    return max(complete, key=lambda d: (d / "manifest.json").stat().st_mtime)


def open_dataset(
    root: str | Path,
    split: str,
    dataset: str | None = None,
    run: str | Path | None = None,
    pred_dir: str | Path | None = None,
) -> tuple[list[ScanRecord], Callable[[int], ViewScan]]:
    """The scans of ``split`` under ``root`` and a loader of scan ``i`` with its labels and predictions."""
    from rangecps.data import DATASETS, DatasetIndex, read_scan
    from rangecps.data.prep import prep_dir
    from rangecps.eval.submit import make_writer

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root not found")
    name = dataset or guess_dataset(root, Path(run) if run else None)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    cls = DATASETS[name]
    saved = prep_dir(root) / "index.json"
    index = DatasetIndex.load(saved, root) if saved.is_file() else cls.build_index(root)
    if index.dataset != name:
        index = cls.build_index(root)
    records = index.split(split)
    if not records:
        raise ValueError(f"{root}: split '{split}' of {name} holds no scans")
    label_map = load_label_map(cls.label_map)
    if pred_dir is None and run is not None:
        pred_dir = find_prediction_dir(Path(run), split)
    elif pred_dir is not None:
        from rangecps.eval.outputs import read_manifest, written_by_eval

        if not Path(pred_dir).is_dir():
            raise FileNotFoundError(f"{pred_dir}: no such results folder (--pred-dir)")
        if written_by_eval(Path(pred_dir).absolute()):
            read_manifest(pred_dir)  # refuses a tree without a complete manifest
    writer = make_writer(cls.file_format, pred_dir, label_map, root, split) if pred_dir is not None else None

    def load(i: int) -> ViewScan:
        rec = records[i]
        scan = read_scan(root, rec, cls.file_format, label_map if rec.labels else None)
        pred = None
        if writer is not None:
            path = writer.path(rec)
            if path.is_file():
                pred = read_predictions(path, cls.file_format, label_map, scan.num_points)
            else:
                print(f"{rec.scan_id}: no prediction file {path}")
        return ViewScan(scan.points, scan.ring, scan.labels, pred, label_map, cls.file_format, rec.scan_id)

    return records, load
