"""Prediction files in the official layouts, and the archives the benchmark servers take.

SemanticKITTI (checked against semantic-kitti-api ``validate_submission.py`` and ``evaluate_semantics.py``)::

    <out>/sequences/SS/predictions/NNNNNN.label   uint32 per point: raw id (learning_map_inv) in the low 16 bits
    <out>/submission.zip                          sequences/, sequences/SS/, sequences/SS/predictions/ and the
                                                  .label files at the top level, plus description.txt

The validator looks for explicit directory entries (``sequences/``, ``sequences/11/``,
``sequences/11/predictions/``), so the archive holds them; it compares each file's size / 4 with the scan's point
count. ``description.txt`` (method name, description, urls, bibtex, affiliation) is optional for the server.

nuScenes lidarseg (checked against nuscenes-devkit 1.2.0 ``eval/lidarseg/validate_submission.py``)::

    <out>/lidarseg/<eval_set>/<lidar sample_data token>_lidarseg.bin   uint8 per point, challenge class 1..16
    <out>/<eval_set>/submission.json     {"meta": {"use_camera", "use_lidar", "use_radar", "use_map",
                                                   "use_external"}}, every value a bool
    <out>/submission.zip                 both folders above at the top level (what the devkit's ``zip_out`` makes)

The files carry train ids (the 16 coarse challenge classes) directly, never fine ids; 0 (ignore) is refused by the
devkit. ``eval_set`` is the devkit's split name: ``val``/``test``, or ``mini_val`` on a ``v1.0-mini`` root.

Every write is atomic, and a prediction array whose length differs from the scan's point count, or that holds a
class outside 1..K-1, raises ``ValueError`` naming the file before anything is written.

Results folders (staged, then sealed by ``manifest.json``) are :mod:`rangecps.eval.outputs`'; the writers' ``finish``
refuse to zip a tree holding prediction files they did not write.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np

from rangecps.atomic import atomic_save_array, atomic_write
from rangecps.data.index import ScanRecord
from rangecps.eval.outputs import refuse_strays
from rangecps.io import write_kitti_labels
from rangecps.labels import LabelMap

# The devkit's lidarseg challenge: classes 1..16, 0 is ignore and may not be predicted.
NUSCENES_NUM_CLASSES = 17
LIDAR_ONLY_META = {
    "use_camera": False,
    "use_lidar": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}
DESCRIPTION_FIELDS = (
    "method name",
    "method description",
    "project url",
    "publication url",
    "bibtex",
    "organization or affiliation",
)
PREDICTION_TREES = ("sequences", "lidarseg")  # the top folders of the two prediction layouts


def check_prediction(labels: np.ndarray, num_points: int, num_classes: int, path: Path) -> np.ndarray:
    """Return ``labels`` as ``(N,) int64`` if it is one class in ``1..num_classes-1`` per point, else raise.

    Args:
        labels: ``(N,)`` integer train ids of one scan.
        num_points: the scan's point count ``N`` (from its point file).
        num_classes: ``K``, counting the ignore class 0.
        path: the file about to be written (named in the error).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: predictions must be a (N,) integer array, got {labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != num_points:
        raise ValueError(
            f"{path}: {labels.shape[0]} predictions for a scan of {num_points} points; not written"
        )
    if labels.size and (labels.min() < 1 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: predictions must be classes 1..{num_classes - 1} (0 = ignore is not a prediction), "
            f"got values in [{labels.min()}, {labels.max()}]; not written"
        )
    return labels.astype(np.int64, copy=False)


def _zip_dir_entry(archive: zipfile.ZipFile, name: str) -> None:
    # ZipFile.mkdir is Python 3.11+; an entry ending in "/" with the directory attributes is the same thing.
    info = zipfile.ZipInfo(name.rstrip("/") + "/", date_time=time.localtime()[:6])
    info.external_attr = (0o40755 << 16) | 0x10  # unix drwxr-xr-x, MS-DOS directory flag
    archive.writestr(info, b"")


def _write_zip(path: Path, root: Path, dirs: list[str], files: list[str], extra: dict[str, str]) -> Path:
    """Atomically write ``path``: directory entries ``dirs``, files ``files`` (relative to ``root``) and text
    members ``extra`` (name -> content)."""
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in dirs:
            _zip_dir_entry(archive, name)
        for name in files:
            archive.write(root / name, name)
        for name, text in extra.items():
            archive.writestr(name, text)
    return path


class KittiWriter:
    """SemanticKITTI ``.label`` predictions under ``out_dir/sequences``, and ``submission.zip``.

    Args:
        out_dir: results folder.
        label_map: the SemanticKITTI label map; predictions (train ids) are written as its raw ids.
    """

    def __init__(self, out_dir: str | Path, label_map: LabelMap) -> None:
        self.out_dir = Path(out_dir)
        self.label_map = label_map
        self.written: list[str] = []  # relative paths, for the archive (a few bytes per scan)

    def path(self, record: ScanRecord) -> Path:
        sequence, frame = record.scan_id.split("/")
        return self.out_dir / "sequences" / sequence / "predictions" / f"{frame}.label"

    def write(self, record: ScanRecord, labels: np.ndarray, num_points: int) -> Path:
        """Write one scan's ``(N,)`` train-id predictions as raw ids; returns the file."""
        path = self.path(record)
        labels = check_prediction(labels, num_points, self.label_map.num_classes, path)
        write_kitti_labels(path, self.label_map.to_raw(labels).astype(np.uint32))
        self.written.append(path.relative_to(self.out_dir).as_posix())
        return path

    def finish(self, description: dict[str, str] | None = None) -> list[Path]:
        """Write ``submission.zip`` of every file written so far, with ``description.txt``; ValueError (nothing
        zipped) when the tree holds prediction files this writer did not write, or an incomplete manifest."""
        sequences = sorted({name.split("/")[1] for name in self.written})
        dirs = ["sequences/"]
        for seq in sequences:
            dirs += [f"sequences/{seq}/", f"sequences/{seq}/predictions/"]
        refuse_strays(self.out_dir, "sequences", self.written)
        description = description or {}
        text = "".join(f"{key}: {description.get(key, '')}\n" for key in DESCRIPTION_FIELDS)
        zip_path = self.out_dir / "submission.zip"
        _write_zip(zip_path, self.out_dir, dirs, sorted(self.written), {"description.txt": text})
        return [zip_path]


class NuScenesWriter:
    """nuScenes lidarseg ``.bin`` predictions, ``submission.json`` and ``submission.zip``.

    Args:
        out_dir: results folder.
        eval_set: the devkit's split name (``val``, ``test``, ``mini_val`` ...); see :func:`nuscenes_eval_set`.
        meta: the ``meta`` block of ``submission.json`` (default: lidar only, no map, no external data).
    """

    def __init__(self, out_dir: str | Path, eval_set: str, meta: dict[str, bool] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.eval_set = eval_set
        self.meta = dict(LIDAR_ONLY_META if meta is None else meta)
        if set(self.meta) != set(LIDAR_ONLY_META) or not all(isinstance(v, bool) for v in self.meta.values()):
            raise ValueError(f"nuScenes submission meta must map exactly {sorted(LIDAR_ONLY_META)} to bools")
        self.written: list[str] = []

    def path(self, record: ScanRecord) -> Path:
        if not record.token:
            raise ValueError(
                f"scan {record.scan_id}: no LIDAR_TOP sample_data token to name its prediction file"
            )
        return self.out_dir / "lidarseg" / self.eval_set / f"{record.token}_lidarseg.bin"

    def write(self, record: ScanRecord, labels: np.ndarray, num_points: int) -> Path:
        """Write one scan's ``(N,)`` challenge-class predictions (1..16) as uint8; returns the file."""
        path = self.path(record)
        labels = check_prediction(labels, num_points, NUSCENES_NUM_CLASSES, path)
        atomic_save_array(path, labels.astype(np.uint8))
        self.written.append(path.relative_to(self.out_dir).as_posix())
        return path

    def finish(self, description: dict[str, str] | None = None) -> list[Path]:
        """Write ``<eval_set>/submission.json`` and ``submission.zip`` (``description`` is not used)."""
        refuse_strays(self.out_dir, "lidarseg", self.written)
        meta_path = self.out_dir / self.eval_set / "submission.json"
        with atomic_write(meta_path, "w") as f:
            json.dump({"meta": self.meta}, f, indent=1)
        dirs = ["lidarseg/", f"lidarseg/{self.eval_set}/", f"{self.eval_set}/"]
        files = [*sorted(self.written), meta_path.relative_to(self.out_dir).as_posix()]
        zip_path = self.out_dir / "submission.zip"
        _write_zip(zip_path, self.out_dir, dirs, files, {})
        return [meta_path, zip_path]


def nuscenes_eval_set(root: str | Path, split: str) -> str:
    """The devkit's name of ``split`` on ``root``: ``mini_<split>`` where only ``v1.0-mini`` exists, else
    ``split`` (rangecps indexes a mini root's ``mini_train``/``mini_val`` also as ``train``/``val``)."""
    root = Path(root)
    if split in ("train", "val") and not (root / "v1.0-trainval").is_dir() and (root / "v1.0-mini").is_dir():
        return f"mini_{split}"
    return split


def make_writer(
    file_format: str, out_dir: str | Path, label_map: LabelMap, root: str | Path, split: str
) -> KittiWriter | NuScenesWriter:
    """The writer for a dataset's ``file_format`` (``"kitti"`` or ``"nuscenes"``)."""
    if file_format == "kitti":
        return KittiWriter(out_dir, label_map)
    if file_format == "nuscenes":
        if label_map.num_classes != NUSCENES_NUM_CLASSES:
            raise ValueError(
                f"label map {label_map.name!r} has {label_map.num_classes} classes; nuScenes lidarseg "
                f"submissions need the {NUSCENES_NUM_CLASSES - 1} challenge classes"
            )
        return NuScenesWriter(out_dir, nuscenes_eval_set(root, split))
    raise ValueError(f"no submission writer for file format {file_format!r}")
