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

Results folders are all-or-nothing (:class:`StagedFolder`): ``rangecps-eval`` and ``rangecps-infer`` build them in a
hidden sibling ``.<name>.partial-<pid>`` while holding the destination's lock (:func:`rangecps.folders.folder_lock`)
and move the finished folder into place in one rename, so a failed or killed run leaves the earlier folder as it was.
An evaluation's folder ends with ``manifest.json`` (checkpoint, step, revision, scans, the files, ``"complete":
true``), written last; readers of predictions (:func:`read_manifest`, :func:`check_prediction_file`, ``rangecps-vis
dataset``) refuse a rangecps-eval prediction tree without a complete one, and :meth:`KittiWriter.finish` /
:meth:`NuScenesWriter.finish` refuse to zip a tree holding prediction files they did not write.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from rangecps.atomic import atomic_save_array, atomic_write
from rangecps.data.index import ScanRecord
from rangecps.folders import LOCK_NAME, folder_lock
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
MANIFEST = "manifest.json"
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


# ------------------------------------------------------------------------------------------ results folders


class IncompleteResults(ValueError):
    """A prediction tree written by rangecps-eval without a complete ``manifest.json``."""


def refuse_strays(folder: Path, tree: str, written: list[str]) -> None:
    """Refuse to zip ``folder`` when it holds an incomplete manifest, or prediction files under ``folder/tree``
    that are not among ``written`` (left by another evaluation: the archive would mix the two)."""
    if (folder / MANIFEST).exists():
        read_manifest(folder)
    mine = set(written)
    strays = sorted(
        rel
        for p in (folder / tree).rglob("*")
        if p.is_file() and (rel := p.relative_to(folder).as_posix()) not in mine
    )
    if strays:
        raise ValueError(
            f"{folder / strays[0]}: not written by this evaluation ({len(strays)} such file(s) under "
            f"{folder / tree}); a submission.zip would mix evaluations, so none was written"
        )


def write_manifest(folder: Path, info: dict[str, Any]) -> Path:
    """Write ``folder/manifest.json``: ``info``, every file of the folder (relative paths, the lock and the
    manifest aside) and ``"complete": true``. Written last: it marks the folder complete."""
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name not in (MANIFEST, LOCK_NAME)
    )
    path = folder / MANIFEST
    with atomic_write(path, "w") as f:
        json.dump({**info, "files": files, "complete": True}, f, indent=1)
    return path


_MANIFESTS: dict[Path, tuple[int, dict[str, Any], frozenset[str]]] = {}
AGAIN = "evaluate again with rangecps-eval --write-predictions"


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The complete ``manifest.json`` of a rangecps-eval results folder; :class:`IncompleteResults` otherwise."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise IncompleteResults(
            f"{folder}: no {MANIFEST}, so its predictions may come from an evaluation that did not finish, or "
            f"mix two (rangecps-eval before manifests); {AGAIN}"
        )
    try:
        stamp = path.stat().st_mtime_ns
        cached = _MANIFESTS.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncompleteResults(f"{path}: unreadable ({e}); {AGAIN}") from None
    if (
        not isinstance(data, dict)
        or data.get("complete") is not True
        or not isinstance(data.get("files"), list)
    ):
        raise IncompleteResults(f"{path}: does not mark the results complete; {AGAIN}")
    _MANIFESTS[path] = (stamp, data, frozenset(map(str, data["files"])))
    return data


def prediction_root(path: str | Path) -> Path | None:
    """The results folder of a prediction file at rangecps-eval's paths (``sequences/SS/predictions/F.label``,
    ``lidarseg/<set>/F_lidarseg.bin``), else None."""
    p = Path(path).absolute()
    parts = p.parts
    if len(parts) > 4 and parts[-2] == "predictions" and parts[-4] == "sequences":
        return p.parents[3]
    if len(parts) > 3 and parts[-3] == "lidarseg" and p.name.endswith("_lidarseg.bin"):
        return p.parents[2]
    return None


_EVAL_NAME = re.compile(r"^\.?eval_[^/]+$")


def written_by_eval(folder: Path) -> bool:
    """Whether ``folder`` is (or was meant to be) a rangecps-eval results folder: it has a manifest,
    ``metrics.json`` or ``submission.zip``, or the name ``eval_<split>_<net>`` or of a staging folder. A dataset
    root (ground truth at the same paths) or another tool's prediction tree is none of these."""
    return (
        any((folder / name).exists() for name in (MANIFEST, "metrics.json", "submission.zip"))
        or bool(_EVAL_NAME.match(folder.name))
        or ".partial-" in folder.name
    )


def check_prediction_file(path: str | Path) -> None:
    """Refuse a prediction file of a rangecps-eval tree without a complete manifest, or not listed in it."""
    root = prediction_root(path)
    if root is None or not written_by_eval(root):
        return
    read_manifest(root)
    listed = _MANIFESTS[root / MANIFEST][2]
    rel = Path(path).absolute().relative_to(root).as_posix()
    if rel not in listed:
        raise IncompleteResults(
            f"{path}: not among the files {root / MANIFEST} lists, so not from that evaluation; {AGAIN}"
        )


def check_out_folder(out: Path, replace: bool, options: str, keep: list[tuple[str, Path]]) -> bool:
    """Check that ``out`` may become a results folder; returns whether it holds earlier results.

    Refused: a file; a folder that holds one of ``keep`` (``(what, path)`` pairs: the checkpoint, the inputs, the
    current folder; a results folder is replaced as a whole); a folder holding anything (its lock aside) unless
    ``replace`` (FileExistsError naming what it holds and ``options``)."""
    from rangecps.folders import refuse_earlier_results

    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    target = out.resolve()
    for what, path in keep:
        path = Path(path).resolve()
        if path == target or target in path.parents:
            raise ValueError(
                f"{out}: holds {what} {path}; a results folder is replaced as a whole, so choose one of its own"
            )
    held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if held and not replace:
        refuse_earlier_results(out, tuple(held[:5]), "earlier results", options)
    return bool(held)


class StagedFolder:
    """A results folder built in a hidden sibling and moved into place, whole, by :meth:`publish`.

    ``with StagedFolder(out, "evaluation") as stage:`` locks ``out`` (creating it; a second writer gets
    :class:`rangecps.folders.FolderInUse`), removes staging folders that killed runs left, and makes the empty
    ``stage.path`` (``<parent>/.<name>.partial-<pid>``). :meth:`publish` replaces ``out`` by it (two renames).
    Leaving the block without publishing removes the staging folder, and ``out`` too if this created it: a failed
    or killed run leaves ``out`` as it was. An ``OSError`` creating either names ``out``.
    """

    def __init__(self, out: str | os.PathLike, what: str) -> None:
        self.out = Path(out)
        self.what = what
        self.path = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self.published = False
        self.created = False

    def _siblings(self, kind: str) -> list[Path]:
        return list(self.out.parent.glob(f".{glob.escape(self.out.name)}.{kind}-*"))

    def __enter__(self) -> StagedFolder:
        self.created = not self.out.exists()
        self._lock = folder_lock(self.out, self.what)
        try:
            self._lock.__enter__()
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot write the results folder ({e.strerror or e}); choose another --out",
                str(self.out),
            ) from None
        try:
            for stale in self._siblings("partial") + self._siblings("old"):  # left by killed runs
                shutil.rmtree(stale, ignore_errors=True)
            self.path.mkdir()
        except OSError as e:
            self._cleanup()
            raise OSError(
                e.errno, f"cannot write beside the results folder ({e.strerror or e}); choose another --out",
                str(self.out),
            ) from None  # fmt: skip
        except BaseException:
            self._cleanup()
            raise
        return self

    def publish(self) -> None:
        """Replace ``out`` by the staging folder (``out``'s earlier content is deleted)."""
        old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
        had = self.out.exists()
        if had:
            os.rename(self.out, old)
        try:
            os.rename(self.path, self.out)
        except BaseException:
            if had:
                os.rename(old, self.out)
            raise
        self.published = True
        shutil.rmtree(old, ignore_errors=True)

    def _cleanup(self) -> None:
        try:
            shutil.rmtree(self.path, ignore_errors=True)
            if self.created and not self.published and self.out.is_dir():
                if [p.name for p in self.out.iterdir()] in ([], [LOCK_NAME]):
                    shutil.rmtree(self.out, ignore_errors=True)
        finally:
            self._lock.__exit__(None, None, None)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup()
