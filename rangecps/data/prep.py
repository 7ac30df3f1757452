"""``rangecps-prep`` for a dataset root: check every file, write the index, the split lists and input statistics.

All problems are collected and reported together (missing folders, missing or truncated files, label counts that
differ from point counts, unknown label ids, non-finite points, a split whose scans are all empty), so that one run
tells a user everything that is wrong with a download; :class:`DatasetProblems` holds them all and reads as one
line. Sequences or splits a root lacks are notes, not problems: what is there is indexed, and what needs an empty
split (training needs train and val) refuses it then.

Prepared files live in :func:`prep_dir` (``data.prep_dir`` / ``rangecps-prep --out``, default ``<root>/rangecps``),
so that a read-only dataset root can be prepared elsewhere. The index and the statistics record what made them
(dataset kind, label map, label sources, layout, sizes and modification times of the files: see
:func:`rangecps.data.index.source_key`); :func:`load_prepared` prepares the root again, with a note, when they no
longer describe it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rangecps.atomic import atomic_write
from rangecps.data.dataset import InputStats
from rangecps.data.index import DatasetIndex, ScanRecord, source_key, stale_reason
from rangecps.data.sample import non_finite
from rangecps.data.splits import PUBLISHED_PERCENTS, SplitError, make_split
from rangecps.io import (
    ScanFormatError,
    read_kitti_labels,
    read_kitti_points,
    read_lidarseg,
    read_nuscenes_points,
)
from rangecps.labels import LabelMap, load_label_map

CHECKED_SPLITS = ("train", "val", "test")


# How many problems the one-line message of DatasetProblems names; rangecps-prep prints all of them.
SHOWN_PROBLEMS = 10


class DatasetProblems(ValueError):
    """Raised by :func:`prepare` when a dataset root has problems.

    ``problems`` lists every one of them (one line each, naming the file or folder); the message is one line: the
    count and the first few. A ValueError, so that every command that reports bad input prints it as one error
    line; ``rangecps-prep`` prints the whole list.
    """

    def __init__(self, root: str | Path, problems: list[str] | str, dataset: str | None = None) -> None:
        self.root = Path(root)
        listed = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [" ".join(str(p).splitlines()) for p in listed]  # each one line
        self.dataset = dataset
        super().__init__(self.summary())

    def __reduce__(self) -> tuple:  # keep the fields through pickling (multiprocessing, DDP)
        return (type(self), (self.root, self.problems, self.dataset))

    def summary(self, shown: int = SHOWN_PROBLEMS) -> str:
        """One line: the problem itself when there is one, else the count and the first ``shown`` problems."""
        if len(self.problems) == 1:
            return self.problems[0]
        first = "; ".join(self.problems[:shown])
        rest = len(self.problems) - shown
        how = f"rangecps-prep {self.dataset} --root {self.root}" if self.dataset else "rangecps-prep"
        more = f"; ... and {rest} more ({how} lists them all)" if rest > 0 else ""
        return f"{self.root}: {len(self.problems)} problems: {first}{more}"

    def __str__(self) -> str:
        return self.summary()


_said: set[str] = set()


def note(message: str) -> None:
    """Print ``note: message`` to stderr, once per process (a note repeats nothing when asked again)."""
    if message not in _said:
        _said.add(message)
        print(f"note: {message}", file=sys.stderr, flush=True)


@dataclass
class PrepReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scans_checked: int = 0


def prep_dir(root: str | Path, out: str | Path | None = None) -> Path:
    """Where prepared files live (index, statistics, split lists, cache): ``out`` if given (``data.prep_dir``,
    ``rangecps-prep --out``), else ``<root>/rangecps``. Every reader and writer of prepared data asks here."""
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
    sums: np.ndarray,
    counts: np.ndarray,
    empty: list[Path],
) -> None:
    """Check one scan's files; add problems to ``report``; accumulate channel sums into ``sums`` and train-class
    point counts into ``counts``; list the scan in ``empty`` when it holds no point."""
    try:
        if file_format == "kitti":
            points = read_kitti_points(root / rec.points)
        else:
            points, _ = read_nuscenes_points(root / rec.points)
    except ScanFormatError as e:
        report.problems.append(str(e))
        return
    if len(points) == 0:
        empty.append(root / rec.points)
    bad = non_finite(points)  # points are (N, 4): every column
    if bad.any():
        report.problems.append(f"{root / rec.points}: {int(bad.sum())} points have non-finite values")
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
            counts += np.bincount(label_map.raw_to_train[raw[ok]], minlength=len(counts))
    p = points[~bad].astype(np.float64)
    ch = np.column_stack([np.linalg.norm(p[:, :3], axis=1), p])  # range, x, y, z, intensity
    sums[0] += len(ch)
    sums[1:6] += ch.sum(axis=0)
    sums[6:11] += (ch * ch).sum(axis=0)
    report.scans_checked += 1


def check_dataset(
    dataset_cls: type, root: str | Path, index: DatasetIndex, progress: bool = True
) -> tuple[PrepReport, InputStats | None]:
    """Check the layout and every file of ``index``; return the report and the input statistics.

    Sequences or splits that the root lacks are notes, not problems: a root may hold only the validation
    sequence (to evaluate a model); what uses an empty split refuses it then. The statistics come from the train
    split, or from the first split that has scans when there are no training scans (``InputStats.split``)."""
    root = Path(root)
    label_map = load_label_map(dataset_cls.label_map)
    report = PrepReport()
    report.notes.extend(dataset_cls.layout_notes(root))
    sums = {split: np.zeros(11, np.float64) for split in CHECKED_SPLITS}
    counts = {split: np.zeros(label_map.num_classes, np.int64) for split in CHECKED_SPLITS}
    empty: list[Path] = []
    for split in CHECKED_SPLITS:
        missing = [p for p in dataset_cls.expected_folders(root, split) if not p.is_dir()]
        target = report.notes if split == "test" else report.problems
        target.extend(f"{p}: missing folder ({split} split)" for p in missing)
        records = index.splits.get(split, [])
        for rec in tqdm(records, desc=f"check {split}", disable=not progress, leave=False):
            _check_scan(
                root, rec, dataset_cls.file_format, label_map, report, sums[split], counts[split], empty
            )
    sizes = {split: len(index.splits.get(split, [])) for split in CHECKED_SPLITS}
    filled = [split for split in CHECKED_SPLITS if sizes[split]]
    if not filled:
        report.problems.append(f"{root}: no scans found for {dataset_cls.name} (none of its splits is there)")
        return report, None
    for split in ("train", "val"):
        if not sizes[split]:
            report.notes.append(
                f"{root}: no scans for the {split} split ({dataset_cls.describe_split(split)}): training on "
                f"this root is refused; evaluation works on the splits that are there"
            )
    split = filled[0]
    total = sums[split]
    if total[0] == 0:
        report.problems.append(
            f"{root}: all {sizes[split]} scans of the {split} split are empty (no point with finite values), "
            f"so no input statistics can be computed (first: {index.splits[split][0].points})"
        )
        return report, None
    if empty:
        report.notes.append(f"{len(empty)} scan(s) hold no points (first: {empty[0]})")
    if split != "train":
        report.notes.append(
            f"input statistics (stats.json) are those of the {split} split: no training scans"
        )
    mean = total[1:6] / total[0]
    std = np.sqrt(np.maximum(total[6:11] / total[0] - mean**2, 1e-12))
    stats = InputStats(
        tuple(map(float, mean)),
        tuple(map(float, std)),
        sizes[split],
        tuple(map(int, counts[split])),
        split=split,
    )
    return report, stats


def write_split_lists(
    dataset_cls: type, index: DatasetIndex, out: Path, seed: int = 0, notes: list[str] | None = None
) -> list[Path]:
    """Write the labeled list of every published share (1/10/20/50 %) that the dataset will use. Shares whose
    published list names scans the root lacks (only some sequences there) are left out, with one note."""
    written, skipped = [], []
    train_ids = index.ids("train") if "train" in index.splits else []
    if not train_ids:
        return written
    for pct in PUBLISHED_PERCENTS:
        try:
            split = make_split(dataset_cls.name, train_ids, f"{pct}%", seed)
        except SplitError:
            skipped.append(f"{pct}%")
            continue
        path = out / "splits" / f"{dataset_cls.name}_{pct}pct.txt"
        with atomic_write(path, "w") as f:
            f.write("".join(f"{s}\n" for s in split.labeled))
        written.append(path)
    if skipped and notes is not None:
        notes.append(
            f"published labeled lists not written ({', '.join(skipped)}): they name training scans this root "
            f"lacks; training at those shares is refused, other shares are sampled"
        )
    return written


def prepare(
    dataset_cls: type, root: str | Path, out: str | Path | None = None, progress: bool = True, seed: int = 0
) -> tuple[DatasetIndex, InputStats, PrepReport]:
    """Index, check and summarise a dataset root into :func:`prep_dir` ``(root, out)``.

    Raises :class:`DatasetProblems` listing every problem, or ValueError naming the folder when the files
    cannot be written there. The index and statistics record what they were made from (``source``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetProblems(root, f"{root}: dataset root not found", dataset_cls.name)
    out_dir = prep_dir(root, out)
    index = dataset_cls.build_index(root)
    report, stats = check_dataset(dataset_cls, root, index, progress)
    if report.problems or stats is None:
        raise DatasetProblems(root, report.problems, dataset_cls.name)
    index.source = source_key(dataset_cls, root, index)
    stats = replace(stats, source=index.source["files"])
    try:
        stats.save(out_dir / "stats.json")
        write_split_lists(dataset_cls, index, out_dir, seed, report.notes)
        index.save(out_dir / "index.json")  # last: the index and its source mark a complete prep
    except OSError as e:
        raise ValueError(
            f"{out_dir}: cannot write the prepared files ({e.strerror or e}); choose a writable folder with "
            f"data.prep_dir (rangecps-prep --out)"
        ) from e
    return index, stats, report


def saved_prep(
    dataset_cls: type, root: str | Path, out: str | Path | None = None
) -> tuple[DatasetIndex | None, InputStats | None, str | None]:
    """The prepared index and statistics of ``root`` in :func:`prep_dir`, or why they cannot be used as they are
    (``(None, None, reason)``): missing, unreadable, or made from something else than the root as it is now."""
    out_dir = prep_dir(root, out)
    try:
        index = DatasetIndex.load(out_dir / "index.json", root)
        stats = InputStats.load(out_dir / "stats.json")
    except FileNotFoundError as e:
        return None, None, f"{Path(e.filename).name} is missing"
    except (OSError, ValueError) as e:
        return None, None, f"it cannot be read ({e})"
    reason = stale_reason(dataset_cls, root, index)
    if reason is None and stats.source != index.source["files"]:
        reason = "stats.json and index.json come from different runs of rangecps-prep"
    return (None, None, reason) if reason else (index, stats, None)


def load_prepared(
    dataset_cls: type, root: str | Path, out: str | Path | None = None, progress: bool = True
) -> tuple[DatasetIndex, InputStats]:
    """The index and statistics written by :func:`prepare` in :func:`prep_dir` ``(root, out)``, preparing the
    root first when they are not there or do not describe it any more (another dataset kind or label source,
    files added, removed or changed since: a note says why)."""
    root = Path(root)
    out_dir = prep_dir(root, out)
    if (out_dir / "index.json").exists() or (out_dir / "stats.json").exists():
        index, stats, reason = saved_prep(dataset_cls, root, out)
        if index is not None and stats is not None:
            return index, stats
        note(f"{out_dir}: prepared files not used: {reason}; preparing {root} as {dataset_cls.name} again")
    index, stats, report = prepare(dataset_cls, root, out, progress)
    for line in report.notes:
        note(line)
    return index, stats
