"""``rangecps-prep`` for a dataset root: check every file, write the index, the split lists and input statistics.

All problems are collected and reported together (missing folders, missing or truncated files, label counts that
differ from point counts, unknown label ids, non-finite points), so that one run tells a user everything that is
wrong with a download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rangecps.atomic import atomic_write
from rangecps.data.dataset import InputStats
from rangecps.data.index import DatasetIndex, ScanRecord
from rangecps.data.splits import PUBLISHED_PERCENTS, make_split
from rangecps.io import (
    ScanFormatError,
    read_kitti_labels,
    read_kitti_points,
    read_lidarseg,
    read_nuscenes_points,
)
from rangecps.labels import LabelMap, load_label_map

CHECKED_SPLITS = ("train", "val", "test")


class DatasetProblems(RuntimeError):
    """Raised by :func:`prepare` when a dataset root has problems; the message lists all of them."""


@dataclass
class PrepReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scans_checked: int = 0


def prep_dir(root: str | Path, out: str | Path | None = None) -> Path:
    """Where prep writes its files: ``out`` if given, else ``<root>/rangecps``."""
    return Path(out) if out is not None else Path(root) / "rangecps"


def _raw_labels(path: Path, file_format: str, num_points: int) -> np.ndarray:
    if file_format == "kitti":
        return read_kitti_labels(path, num_points)[0]
    return read_lidarseg(path, num_points)


def _check_scan(
    root: Path,
    rec: ScanRecord,
    file_format: str,
    label_map: LabelMap,
    report: PrepReport,
    sums: np.ndarray | None,
    counts: np.ndarray | None,
) -> None:
    """Check one scan's files; add problems to ``report``; accumulate channel sums into ``sums`` and train-class
    point counts into ``counts`` (train split only)."""
    try:
        if file_format == "kitti":
            points = read_kitti_points(root / rec.points)
        else:
            points, _ = read_nuscenes_points(root / rec.points)
    except ScanFormatError as e:
        report.problems.append(str(e))
        return
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        report.problems.append(f"{root / rec.points}: {int((~finite).sum())} points have non-finite values")
    if rec.labels is not None:
        try:
            raw = _raw_labels(root / rec.labels, file_format, len(points))
        except ScanFormatError as e:
            report.problems.append(str(e))
        else:
            known = label_map.raw_known
            ok = raw < len(known)
            ok[ok] = known[raw[ok]]
            if not ok.all():
                ids, n_unknown = np.unique(raw[~ok], return_counts=True)
                listed = ", ".join(
                    f"{i} ({c} points)" for i, c in zip(ids[:10], n_unknown[:10], strict=False)
                )
                report.problems.append(f"{root / rec.labels}: unknown label ids {listed}")
            if counts is not None:
                counts += np.bincount(label_map.raw_to_train[raw[ok]], minlength=len(counts))
    if sums is not None:
        p = points[finite].astype(np.float64)
        ch = np.column_stack([np.linalg.norm(p[:, :3], axis=1), p])  # range, x, y, z, intensity
        sums[0] += len(ch)
        sums[1:6] += ch.sum(axis=0)
        sums[6:11] += (ch * ch).sum(axis=0)
    report.scans_checked += 1


def check_dataset(
    dataset_cls: type, root: str | Path, index: DatasetIndex, progress: bool = True
) -> tuple[PrepReport, InputStats | None]:
    """Check the layout and every file of ``index``; return the report and the train-split statistics."""
    root = Path(root)
    label_map = load_label_map(dataset_cls.label_map)
    report = PrepReport()
    sums = np.zeros(11, np.float64)
    counts = np.zeros(label_map.num_classes, np.int64)
    for split in CHECKED_SPLITS:
        missing = [p for p in dataset_cls.expected_folders(root, split) if not p.is_dir()]
        target = report.notes if split == "test" else report.problems
        target.extend(f"{p}: missing folder ({split} split)" for p in missing)
        records = index.splits.get(split, [])
        if split != "test" and not records:
            report.problems.append(f"{root}: no scans found for the {split} split")
        for rec in tqdm(records, desc=f"check {split}", disable=not progress, leave=False):
            train = split == "train"
            _check_scan(
                root,
                rec,
                dataset_cls.file_format,
                label_map,
                report,
                sums if train else None,
                counts if train else None,
            )
    stats = None
    if sums[0] > 0:
        mean = sums[1:6] / sums[0]
        std = np.sqrt(np.maximum(sums[6:11] / sums[0] - mean**2, 1e-12))
        stats = InputStats(
            tuple(map(float, mean)),
            tuple(map(float, std)),
            len(index.splits.get("train", [])),
            tuple(map(int, counts)),
        )
    return report, stats


def write_split_lists(dataset_cls: type, index: DatasetIndex, out: Path, seed: int = 0) -> list[Path]:
    """Write the labeled list of every published share (1/10/20/50 %) that the dataset will use."""
    written = []
    train_ids = index.ids("train")
    for pct in PUBLISHED_PERCENTS:
        split = make_split(dataset_cls.name, train_ids, f"{pct}%", seed)
        path = out / "splits" / f"{dataset_cls.name}_{pct}pct.txt"
        with atomic_write(path, "w") as f:
            f.write("".join(f"{s}\n" for s in split.labeled))
        written.append(path)
    return written


def prepare(
    dataset_cls: type, root: str | Path, out: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[DatasetIndex, InputStats, PrepReport]:
    """Index, check and summarise a dataset root. Raises :class:`DatasetProblems` listing every problem."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetProblems(f"{root}: dataset root not found")
    out_dir = prep_dir(root, out)
    index = dataset_cls.build_index(root)
    report, stats = check_dataset(dataset_cls, root, index, progress)
    if report.problems:
        shown = "\n  ".join(report.problems[:50])
        more = f"\n  ... and {len(report.problems) - 50} more" if len(report.problems) > 50 else ""
        raise DatasetProblems(f"{root}: {len(report.problems)} problem(s) found:\n  {shown}{more}")
    assert stats is not None  # no problems implies training scans were read
    index.save(out_dir / "index.json")
    stats.save(out_dir / "stats.json")
    write_split_lists(dataset_cls, index, out_dir, seed)
    return index, stats, report


def load_prepared(
    dataset_cls: type, root: str | Path, out: str | Path | None = None, progress: bool = True
) -> tuple[DatasetIndex, InputStats]:
    """The index and statistics written by :func:`prepare`, preparing the root first if they are not there."""
    out_dir = prep_dir(root, out)
    if not (out_dir / "index.json").is_file() or not (out_dir / "stats.json").is_file():
        index, stats, _ = prepare(dataset_cls, root, out, progress)
        return index, stats
    index = DatasetIndex.load(out_dir / "index.json", root)
    if index.dataset != dataset_cls.name:
        raise ValueError(f"{out_dir / 'index.json'} indexes {index.dataset}, not {dataset_cls.name}")
    return index, InputStats.load(out_dir / "stats.json")
